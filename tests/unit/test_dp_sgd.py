"""DP-SGD mechanics, each check with a positive control that shows it would catch the fault:
per-sample gradients of every layer type we train under Opacus, our trainer's clipping to C and
noise scale, and the empirical sensitivity of the summed clipped gradient of our DP objective
(and its violation by in-batch InfoNCE). Plus the refusal of coupled objectives."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from opacus import GradSampleModule
from timm.layers import Conv2dSame, PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from shared_model.config import (
    ImageTowerConfig,
    LossConfig,
    MAEConfig,
    ModelConfig,
    PrivacyConfig,
    TextTowerConfig,
    TrainAppConfig,
    TrainConfig,
)
from shared_model.data.dataset import collate
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model, vit_mae
from shared_model.model.feature_centring import FixedCentring
from shared_model.model.tokens import LearnedToken
from shared_model.privacy import grad_samplers  # noqa: F401  (registers the LearnedToken rule)
from shared_model.privacy.clipping import HooksClipper, make_clipper, sum_per_unit
from shared_model.privacy.dp_trainer import DPSGDTrainer
from shared_model.privacy.errors import PrivacyConfigError
from shared_model.privacy.ghost_clipping import GhostClipper
from shared_model.privacy.plan import DPPlan, resolve_privacy
from shared_model.prompts import build_caption


# --- per-sample gradients --------------------------------------------------------------------
class TokenThenLinear(nn.Module):
    """A class token broadcast to the batch (input detached, as our encoders pass it)."""

    def __init__(self):
        super().__init__()
        self.token = LearnedToken(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.token(x.detach(), count=4) + x[:, :4])


class BatchCentring(nn.Module):
    """Positive control: subtracting the batch mean couples examples (like BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x):
        return self.linear(x - x.mean(dim=0, keepdim=True))


LAYERS = {
    "patch embedding": (lambda: PatchEmbed(16, 8, 3, 12), lambda: torch.randn(5, 3, 16, 16)),
    "attention block": (lambda: Block(12, 2, 2.0, qkv_bias=True, norm_layer=nn.LayerNorm),
                        lambda: torch.randn(5, 7, 12)),
    "layer norm": (lambda: nn.LayerNorm(12), lambda: torch.randn(5, 7, 12)),
    "group norm": (lambda: nn.GroupNorm(4, 12), lambda: torch.randn(5, 12)),
    "embedding": (lambda: nn.Embedding(30, 8), lambda: torch.randint(0, 30, (5, 9))),
    "cls token": (TokenThenLinear, lambda: torch.randn(5, 6, 6)),
    # the CNN tower's layout: Opacus 1.6's own conv rule is wrong on it (grad_samplers.py fixes it)
    "channels-last depthwise conv": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                     lambda: torch.randn(5, 4, 8, 8).contiguous(memory_format=torch.channels_last)),
    "channels-last pointwise conv": (lambda: nn.Conv2d(4, 6, 1),
                                     lambda: torch.randn(5, 4, 8, 8).contiguous(memory_format=torch.channels_last)),
}


def _per_sample_matches(module: nn.Module, x: torch.Tensor) -> bool:
    reference = []
    for i in range(len(x)):
        module.zero_grad()
        module(x[i:i + 1]).float().pow(2).sum().backward()
        reference.append({n: p.grad.clone() for n, p in module.named_parameters()})
    wrapped = GradSampleModule(module, batch_first=True, loss_reduction="sum")
    wrapped.zero_grad()
    wrapped(x).float().pow(2).sum().backward()
    ok = all(torch.allclose(p.grad_sample[i], reference[i][n], atol=1e-5, rtol=1e-4)
             for n, p in module.named_parameters() for i in range(len(x)))
    wrapped._close()
    return ok


@pytest.mark.parametrize("layer", list(LAYERS))
def test_opacus_per_sample_gradients_are_exact_for_our_layers(layer):
    torch.manual_seed(0)
    build, data = LAYERS[layer]
    assert _per_sample_matches(build(), data())


def test_per_sample_check_catches_a_batch_coupled_layer():
    torch.manual_seed(0)
    assert not _per_sample_matches(BatchCentring(), torch.randn(5, 6))


# --- the DP objective's sensitivity ----------------------------------------------------------
TINY = ModelConfig(name="dp-test", image=ImageTowerConfig(image_size=32, patch_size=8, width=48, depth=2, num_heads=2,
                                                          input_norm="local_contrast"),
                   text=TextTowerConfig(max_length=32, trainable_layers=0),
                   mae=MAEConfig(decoder_width=32, decoder_depth=1, decoder_heads=2), embed_dim=32,
                   opacus_compatible=True)
LABELS = ["normal", "moderate_npdr", "drusen", "glaucoma"]


def _coupled_masking(x, mask_ratio):
    """MAE masking whose noise is a fixed function of each example (couples the randomness of the
    two neighbouring batches, as the sensitivity argument does)."""
    n, length, dim = x.shape
    keep = int(round(length * (1 - mask_ratio)))
    ids_shuffle = torch.argsort(torch.sin(1000 * x.detach()[..., 0]), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


DP_LOSS = LossConfig(image_text_variant="bank", image_image=0.0)
MAE_ONLY = LossConfig(image_text=0.0, image_image=0.0)  # also decomposable, and no pass over the text bank: quick


def _plan(clipping: str = "ghost", noise: float = 0.0) -> DPPlan:
    """Eight units sampled at rate 0.5 (expected batch size B = 4), clipping norm C = 0.05."""
    return DPPlan("image", 8, 0.5, noise, 0.05, 1e-5, "prv", 10.0, clipping)


def _dp_trainer(clipping: str, text_layers: int = 0, noise: float = 0.0, loss: LossConfig = DP_LOSS) -> DPSGDTrainer:
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, trainable_layers=text_layers)))
    return DPSGDTrainer(model, EyeCLIPObjective(loss), TrainConfig(steps=1, batch_size=4, warmup_steps=0),
                        torch.device("cpu"), list(range(8)), _plan(clipping, noise))


def _items(size: int = 32) -> list[dict]:
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(8):
        labels = [LABELS[i % len(LABELS)]]
        items.append({"image": torch.rand(3, size, size, generator=generator), "aug": None,
                      "text": build_caption(labels, rng, "CFP"), "labels": ";".join(labels), "path": f"img{i}",
                      "index": i})
    return items


@pytest.fixture(scope="module", params=["ghost", "hooks"])
def dp_setup(request):
    return _dp_trainer(request.param), _items()


def _summed_clipped(trainer: DPSGDTrainer, objective: EyeCLIPObjective, items: list[dict],
                    units: list[int]) -> torch.Tensor:
    batch = collate(items)
    torch.manual_seed(0)  # the same dropout masks (trainable text layers) in every pass compared
    trainer.dp.zero_grad()
    imgs = batch.model_input(torch.device("cpu"), trainer.model.input_norm)
    with trainer.dp.forward():
        out = trainer.model(imgs, batch.texts)
    objective(trainer.model, out, imgs, batch.label_ids, batch.pair_index, batch.labels).total.backward()
    trainer.dp.clipper.clip_and_sum(torch.tensor(units), len(items))
    return torch.cat([p.summed_grad.flatten() for p in trainer.dp.optimizer.params])


def _largest_change(trainer, objective, items, units) -> float:
    full = _summed_clipped(trainer, objective, items, units)
    changes = []
    for drop in sorted(set(units)):
        keep = [i for i, u in enumerate(units) if u != drop]
        changes.append(float((full - _summed_clipped(trainer, objective, [items[i] for i in keep],
                                                     [units[i] for i in keep])).norm()))
    return max(changes)


@pytest.mark.parametrize("units", [list(range(8)), [0, 0, 1, 1, 2, 2, 3, 3]], ids=["image", "patient"])
def test_dp_objective_sensitivity_is_at_most_c(dp_setup, monkeypatch, units):
    trainer, items = dp_setup
    monkeypatch.setattr(vit_mae, "random_masking", _coupled_masking)
    clip = trainer.dp.optimizer.max_grad_norm
    assert _largest_change(trainer, trainer.objective, items, units) <= clip * (1 + 1e-4)


@pytest.mark.parametrize("units", [list(range(8)), [0, 0, 1, 1, 1, 2, 3, 3], [5] * 8], ids=["image", "patient", "one"])
@pytest.mark.parametrize("text_layers", [0, 1], ids=["text-frozen", "text-top-layer"])
def test_ghost_clipping_equals_opacus_per_sample_clipping(monkeypatch, units, text_layers):
    """The clipped per-unit sum from ghost norms + book-keeping equals Opacus' hooks + per-unit sums,
    also through the trainable top layer of a partly frozen text tower."""
    items = _items()
    monkeypatch.setattr(vit_mae, "random_masking", _coupled_masking)
    ghost, hooks = _dp_trainer("ghost", text_layers), _dp_trainer("hooks", text_layers)
    assert isinstance(ghost.dp.clipper, GhostClipper) and isinstance(hooks.dp.clipper, HooksClipper)
    hooks.dp.optimizer.max_grad_norm = ghost.dp.clipper.max_grad_norm = 0.02  # small enough that every unit is clipped
    expected = _summed_clipped(hooks, hooks.objective, items, units)
    assert torch.allclose(_summed_clipped(ghost, ghost.objective, items, units), expected, rtol=1e-4, atol=1e-7)


def test_ghost_clipping_equals_opacus_per_sample_clipping_on_the_cnn_tower(monkeypatch):
    """The same on the pretrained EfficientNet-Lite0 tower of the real-data preset (pointwise and
    depthwise convolutions, TF 'SAME' padding, frozen BatchNorms and frozen stages), 64 px."""
    from shared_model.conf import compose_app

    cfg = compose_app("train", ["model=efficientnet_lite0", "privacy=dp_sgd"])
    items, units = _items(64)[:6], [0, 0, 1, 2, 2, 3]

    def trainer(clipping: str) -> DPSGDTrainer:
        torch.manual_seed(0)
        return DPSGDTrainer(build_model(cfg.model), EyeCLIPObjective(cfg.loss),
                            TrainConfig(steps=1, batch_size=4, warmup_steps=0), torch.device("cpu"), list(range(8)),
                            dataclasses.replace(_plan(clipping), max_grad_norm=0.02))

    ghost, hooks = trainer("ghost"), trainer("hooks")
    assert isinstance(ghost.dp.clipper, GhostClipper) and isinstance(hooks.dp.clipper, HooksClipper)
    kinds = {type(m).__name__ for m in ghost.dp.clipper.modules}
    assert {"Conv2d", "Conv2dSame", "Linear"} <= kinds
    expected = _summed_clipped(hooks, hooks.objective, items, units)
    got = _summed_clipped(ghost, ghost.objective, items, units)
    assert expected.abs().max() > 0 and torch.allclose(got, expected, rtol=1e-4, atol=1e-8)


def _batch_norm() -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():  # statistics and affine away from their initial values
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()  # running statistics: per example


CONV_LAYERS = {  # a layer fed 6-channel 9×9 images (odd: TF 'SAME' pads unevenly)
    "padded": lambda: nn.Conv2d(6, 4, 3, padding=1),
    "strided": lambda: nn.Conv2d(6, 4, 3, stride=2, padding=1),
    "dilated": lambda: nn.Conv2d(6, 4, 3, dilation=2, padding=2, bias=False),
    "pointwise": lambda: nn.Conv2d(6, 8, 1),
    "depthwise": lambda: nn.Conv2d(6, 6, 5, stride=2, padding=2, groups=6),
    "depthwise 3x3": lambda: nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6),
    "tf-same depthwise": lambda: Conv2dSame(6, 6, 3, stride=2, groups=6),
    "tf-same channel multiplier": lambda: Conv2dSame(6, 12, 3, stride=2, groups=6),
    "grouped": lambda: nn.Conv2d(6, 4, 3, padding=1, groups=2),
    "eval batch norm": _batch_norm,
}


def _per_sample_loss(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x).sin().flatten(1).sum(1)


def _reference_per_sample(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-image gradients [B, *p.shape]: Opacus' (one-at-a-time for BatchNorm, which Opacus refuses)."""
    if isinstance(layer, nn.BatchNorm2d):
        rows = [torch.autograd.grad(_per_sample_loss(layer, x[i:i + 1]).sum(), list(layer.parameters()))
                for i in range(len(x))]
        return [torch.stack(grads) for grads in zip(*rows)]
    wrapped = GradSampleModule(nn.Sequential(layer), batch_first=True, loss_reduction="sum")
    _per_sample_loss(wrapped, x).sum().backward()
    grads = [p.grad_sample.clone() for p in layer.parameters()]
    wrapped._close()
    return grads


@pytest.mark.parametrize("way", ["gram", "per-image"])
@pytest.mark.parametrize("layer", list(CONV_LAYERS))
def test_ghost_clipping_of_convolutions_and_batch_norm_equals_per_sample_clipping(monkeypatch, layer, way):
    """Each convolution and eval-mode BatchNorm alone: the ghost clipper's clipped sum over units of
    1-3 images equals clipping the per-unit sums of Opacus' per-sample gradients, on the Gram way
    and on the per-image way alike (forced through the cost constant)."""
    from shared_model.privacy import ghost_clipping

    monkeypatch.setattr(ghost_clipping, "PASS_COST", 1e12 if way == "gram" else 0)
    torch.manual_seed(0)
    module = CONV_LAYERS[layer]()
    x = torch.randn(6, 6, 9, 9)
    units = torch.tensor([3, 3, 1, 0, 3, 5])
    expected = [torch.stack([grads[units == u].sum(0) for u in units.unique()])
                for grads in _reference_per_sample(module, x)]
    norms = torch.stack([e.flatten(1).pow(2).sum(1) for e in expected]).sum(0).sqrt()
    clip = float(norms.median())
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    assert (factor < 1).any() and (factor == 1).any()  # some units clipped, some not
    clipper = GhostClipper(module, clip)
    with clipper.forward():
        loss = _per_sample_loss(module, x).mean()
    loss.backward()
    clipper.clip_and_sum(units, len(x))
    for param, e in zip(module.parameters(), expected):
        assert torch.allclose(param.summed_grad, (factor.view(-1, *[1] * param.dim()) * e).sum(0), rtol=1e-4, atol=1e-6)
    clipper.close()


@pytest.mark.parametrize("path", ["image by image", "tap by tap"])
@pytest.mark.parametrize("layer", ["depthwise", "depthwise 3x3", "tf-same depthwise"])
def test_depthwise_per_image_gradients_equal_opacus_on_both_paths(monkeypatch, layer, path):
    """A depthwise layer's per-image weight gradients, whichever way its size picks (forced through
    the threshold; a 5x5 kernel always goes tap by tap), equal Opacus' per-sample gradients."""
    from shared_model.privacy import ghost_clipping

    monkeypatch.setattr(ghost_clipping, "BY_IMAGE_POSITIONS", 0 if path == "image by image" else 10 ** 9)
    torch.manual_seed(0)
    module = CONV_LAYERS[layer]()
    x = torch.randn(5, 6, 9, 9)
    output = module(x)
    (grad,) = torch.autograd.grad(output.sin().flatten(1).sum(1).sum(), output)
    got = ghost_clipping._depthwise_per_image(module, x, grad)
    assert torch.allclose(got, _reference_per_sample(module, x)[0], rtol=1e-4, atol=1e-5)


def test_ghost_clipping_refuses_batch_norm_in_training_mode():
    clipper = GhostClipper(nn.BatchNorm2d(3).train(), 1.0)
    with pytest.raises(RuntimeError, match="eval mode"), clipper.forward():
        clipper.modules[0](torch.randn(2, 3, 4, 4))


def test_ghost_clipping_refuses_modules_it_cannot_handle():
    with pytest.raises(PrivacyConfigError, match=r"norm \(GroupNorm\)"):
        GhostClipper(nn.ModuleDict({"linear": nn.Linear(3, 3), "norm": nn.GroupNorm(1, 3)}), 1.0)


class PatchModel(nn.Module):
    """Every layer type the ghost clipper handles: patchifying convolution, class token, layer norm, linear."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 4, stride=4)
        self.token = LearnedToken(6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # [N, 4, 6]
        tokens = torch.cat([self.token(tokens.detach(), count=1), tokens], 1)  # [N, 5, 6]
        return self.head(self.norm(tokens)).mean(1)


def _private_gradient(clipping: str, x: torch.Tensor, units: list[int]) -> torch.Tensor:
    """p.grad after one noise-free DPStep of ``clipping`` on PatchModel (the same weights every time)."""
    from shared_model.privacy.dp_step import DPStep

    torch.manual_seed(0)
    model = PatchModel()
    plan = dataclasses.replace(_plan(clipping), max_grad_norm=0.01)  # small enough that every unit is clipped
    dp = DPStep(model, torch.optim.SGD(model.parameters(), lr=0.1), plan, units, torch.device("cpu"))
    dp.zero_grad()
    with dp.forward():
        loss = model(x).pow(2).sum(1).mean()
    loss.backward()
    dp.noise(list(range(len(x))))
    dp.close()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("units", [list(range(6)), [0, 0, 1, 2, 2, 2]], ids=["image", "patient"])
def test_the_hooks_and_ghost_clippers_give_the_same_private_gradient(units):
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ghost, hooks = _private_gradient("ghost", x, units), _private_gradient("hooks", x, units)
    assert ghost.abs().max() > 0 and torch.allclose(ghost, hooks, rtol=1e-4, atol=1e-8)


def _hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, kind)) for m in model.modules()
               for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


@pytest.mark.parametrize("clipping", ["ghost", "hooks"])
def test_close_takes_every_hook_off_the_model(clipping):
    model = build_model(TINY)
    before = _hook_count(model)
    trainer = DPSGDTrainer(model, EyeCLIPObjective(DP_LOSS), TrainConfig(steps=1, batch_size=4, warmup_steps=0),
                           torch.device("cpu"), list(range(8)), _plan(clipping, noise=1.0))
    assert _hook_count(model) > before
    trainer.train_step(collate(_items()[:3]))
    trainer.close()
    assert _hook_count(model) == before and not hasattr(model, "autograd_grad_sample_hooks")
    for p in model.parameters():  # nothing per sample or clipped is kept on the parameters
        assert all(getattr(p, name, None) is None for name in ("summed_grad", "grad_sample", "_current_grad_sample"))


def test_ghost_falls_back_to_hooks_for_modules_it_cannot_handle():
    from opacus.optimizers import DPOptimizer

    def clipper(kind: str, model: nn.Module):
        return make_clipper(kind, model, DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0,
                                                     max_grad_norm=1.0, expected_batch_size=4))

    grouped = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.GroupNorm(1, 3), nn.Flatten(), nn.Linear(12, 2))
    assert isinstance(clipper("ghost", PatchModel()), GhostClipper)
    assert isinstance(clipper("ghost", grouped), HooksClipper)
    assert isinstance(clipper("hooks", PatchModel()), HooksClipper)
    with pytest.raises(ValueError, match="clipping must be one of"):
        clipper("exact", PatchModel())


def test_in_batch_infonce_violates_the_sensitivity_bound(dp_setup, monkeypatch):
    trainer, items = dp_setup
    monkeypatch.setattr(vit_mae, "random_masking", _coupled_masking)
    coupled = EyeCLIPObjective(LossConfig(image_text_variant="clip", image_image=0.0, mae=0.01))
    assert _largest_change(trainer, coupled, items, list(range(8))) > 1.05 * trainer.dp.optimizer.max_grad_norm


# --- our trainer's clipping and noise --------------------------------------------------------
@pytest.fixture(scope="module")
def ghost() -> DPSGDTrainer:
    """DPSGDTrainer on its default clipping path (ghost norms) with σ = 1.5, stepping quickly."""
    assert PrivacyConfig().clipping == "ghost"
    return _dp_trainer("ghost", noise=1.5, loss=MAE_ONLY)


def test_a_unit_above_c_adds_exactly_c_to_the_clipped_sum(ghost, monkeypatch):
    """The ghost-clipped sum for one unit of two images has norm exactly C; with C far above it,
    the unit's raw norm (positive control: clipping acted)."""
    monkeypatch.setattr(vit_mae, "random_masking", _coupled_masking)
    items = _items()[:2]
    monkeypatch.setattr(ghost.dp.clipper, "max_grad_norm", 1e6)
    raw = float(_summed_clipped(ghost, ghost.objective, items, [0, 0]).norm())
    monkeypatch.setattr(ghost.dp.clipper, "max_grad_norm", 0.05)
    clipped = float(_summed_clipped(ghost, ghost.objective, items, [0, 0]).norm())
    assert raw > 10 * 0.05 and clipped == pytest.approx(0.05, rel=1e-4)


@pytest.mark.parametrize("images", [0, 8], ids=["empty-batch", "eight-images"])
def test_our_dp_step_adds_noise_of_std_sigma_c_over_the_expected_batch_size(ghost, images):
    """A DPSGDTrainer step leaves (clipped sum + N(0, σ²C²)) / B in every gradient, B = 0.5 · 8 = 4
    the expected batch size, whatever the batch drawn: an empty Poisson batch (zero gradients,
    pure noise) and one of 8 images (a clipped sum of norm at most 8C/B, beside noise of norm
    σC/B·√100k) both give a std of σC/B within 2 % (over 100k parameters the sampling error of
    the std is 0.2 %; dividing by the 8 images drawn would halve it)."""
    ghost.train_step(collate(_items()[:images]))
    grads = torch.cat([p.grad.flatten() for p in ghost.dp.optimizer.params])
    assert len(grads) > 50_000
    assert float(grads.std()) == pytest.approx(1.5 * 0.05 / 4, rel=0.02)


# --- configuration --------------------------------------------------------------------------
def test_coupled_objectives_and_unmodelled_sampling_are_refused():
    app = TrainAppConfig(privacy=PrivacyConfig(mode="dp-sgd", sampling="shuffle", accountant="gdp"))
    with pytest.raises(PrivacyConfigError) as err:
        resolve_privacy(app)
    message = str(err.value)
    for fragment in ("image_text_variant='flair'", "loss.image_image", "Poisson", "under-report"):
        assert fragment in message


def test_dp_sgd_turns_on_the_model_fixes_and_they_remove_batch_statistics():
    app = resolve_privacy(TrainAppConfig(model=TINY.__class__(**{**TINY.__dict__, "opacus_compatible": False}),
                                         loss=LossConfig(image_text_variant="bank", image_image=0.0),
                                         privacy=PrivacyConfig(mode="dp-sgd")))
    assert app.model.opacus_compatible
    model = build_model(app.model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # the ViT trains: GroupNorm; the frozen text encoder: a fixed centre from the public prompts
    assert isinstance(model.image_norm, nn.GroupNorm) and isinstance(model.text.norm, FixedCentring)
    assert float(model.text.norm.calibrated) == 1.0
    assert not model.temperature.log_scale.requires_grad
    assert not any(p.requires_grad for p in model.text.encoder.parameters())  # frozen stays frozen


def test_trainer_refuses_a_coupled_objective():
    model = build_model(TINY)
    with pytest.raises(PrivacyConfigError, match="per-example decomposable"):
        DPSGDTrainer(model, EyeCLIPObjective(LossConfig()), TrainConfig(), torch.device("cpu"), [0, 1], _plan())


@pytest.mark.parametrize("units", [[5, 3, 9, 1], [4, 7, 4, 4, 2, 7]], ids=["distinct", "repeated"])
def test_sum_per_unit_equals_the_per_unit_sums(units):
    class Params:  # the part of Opacus' DPOptimizer that sum_per_unit uses
        params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(5))]

        @staticmethod
        def _get_flat_grad_sample(p):
            return p.grad_sample

    per_image = [torch.randn(len(units), 3, 2), torch.randn(len(units), 5)]
    for p, g in zip(Params.params, per_image):
        p.grad_sample = g.clone()
    sum_per_unit(Params, torch.tensor(units))
    for p, g in zip(Params.params, per_image):
        expected = [sum(g[i] for i, v in enumerate(units) if v == u) for u in sorted(set(units))]
        rows = [row for row in p.grad_sample if row.abs().sum() > 0]  # a unit's later images: zero rows
        assert len(p.grad_sample) == len(units) and len(rows) == len(expected)
        assert all(any(torch.allclose(row, e) for row in rows) for e in expected)
