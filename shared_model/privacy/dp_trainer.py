"""DP-SGD training with Opacus (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
Poisson-sampled privacy units, per-unit gradient clipping to C, Gaussian noise of std σ·C on
the sum, divided by the expected batch size.

Clipping is per unit (a patient, or the image itself), and so is ε. By default
(``privacy.clipping=ghost``) the unit norms come from ghost norms and the clipped sum from one
book-keeping product per layer, with no per-image gradient ever formed
(``shared_model/privacy/ghost_clipping.py``); with ``hooks``, Opacus' ``GradSampleModule``
computes one gradient per image and the images of a unit are summed before Opacus clips. Either
way Opacus' ``DPOptimizer`` adds the noise. The objective must be
per-example decomposable, the CLIP temperature is frozen (one scalar shared by the batch has no
per-example gradient), and FedProx's data-independent pull is added after the noise.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from shared_model.config import TrainConfig
from shared_model.data.dataset import Batch, RetinaDataset, collate
from shared_model.losses.objective import EyeCLIPObjective, ObjectiveOutput
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.privacy import grad_samplers  # noqa: F401  (registers the LearnedToken rule)
from shared_model.privacy.errors import PrivacyConfigError
from shared_model.privacy.ghost_clipping import GhostClipper
from shared_model.privacy.units import PoissonUnitSampler, secret_generator
from shared_model.train.proximal import ProximalTerm
from shared_model.train.trainer import LocalTrainer

log = logging.getLogger(__name__)

# Expected: class/mask tokens take a detached input, so their hooks fire on the output gradient.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                        "to module outputs since no inputs require gradients")


def make_private(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: PoissonUnitSampler,
                 noise_multiplier: float, max_grad_norm: float, device: torch.device, grad_sample_mode: str = "hooks"):
    """Opacus' per-sample gradients on ``model`` (``hooks``: per-layer rules; ``functorch``: vmap
    of every layer, the slower alternative ``bench/dp_overhead.py`` times) and its
    ``DPOptimizer`` around ``optimizer``: noise std σ·C on the sum, divided by the expected batch
    size q·N; noise from a secret generator."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if grad_sample_mode not in ("hooks", "functorch"):
        raise ValueError(f"grad_sample_mode must be hooks or functorch, got {grad_sample_mode!r}")
    hooks = GradSampleModule(model, batch_first=True, loss_reduction="mean",
                             force_functorch=grad_sample_mode == "functorch")
    dp_optimizer = DPOptimizer(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                               expected_batch_size=sampler.sample_rate * sampler.num_units, loss_reduction="mean",
                               generator=secret_generator(device))
    return hooks, dp_optimizer


def sum_per_unit(optimizer, units: torch.Tensor) -> None:
    """Replace each parameter's per-image gradients with per-unit sums (one row per distinct unit
    of the batch), so Opacus clips per unit. ``units``: the unit of every image row.

    The rows of a unit's later images are added in place into its first image's row and then
    zeroed: a zero row has norm 0, so it adds nothing after clipping, and the noise depends on
    the expected batch size only. No buffer of the per-sample size is allocated, and there is
    nothing to do when every image is its own unit (per-image units, one image per patient)."""
    _, slot = torch.unique(units, return_inverse=True)
    count = int(slot.max()) + 1
    if count == len(units):
        return
    position = torch.arange(len(units))
    first = torch.full((count,), len(units)).scatter_reduce_(0, slot, position, "amin")
    later = position[position != first[slot]]
    into = first[slot[later]]
    for p in optimizer.params:
        per_image = optimizer._get_flat_grad_sample(p)
        dev = per_image.device
        per_image.index_add_(0, into.to(dev), per_image[later.to(dev)])
        per_image.index_fill_(0, later.to(dev), 0.0)
        p.grad_sample = per_image


def empty_batch_grads(optimizer) -> None:
    """Per-sample gradients of an empty Poisson batch: the step is pure noise, and is counted."""
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)


class PoissonBatches(Sampler):
    """Endless Poisson-sampled batches of ``(index, sample seed)``; seeds come from the secret generator."""

    def __init__(self, sampler: PoissonUnitSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            indices = self.sampler.draw()
            seeds = torch.randint(0, 2 ** 62, (len(indices),), generator=self.sampler.generator).tolist()
            yield list(zip(indices, seeds))


class DPSGDTrainer(LocalTrainer):
    """:class:`LocalTrainer` whose steps are DP-SGD steps over privacy units."""

    def __init__(self, model: RetinaCLIP, objective: EyeCLIPObjective, cfg: TrainConfig, device: torch.device,
                 record_units: list[int], sample_rate: float, noise_multiplier: float, max_grad_norm: float,
                 total_steps: int | None = None, num_workers: int = 0, proximal: ProximalTerm | None = None,
                 clipping: str = "ghost"):
        if not objective.per_example_decomposable(model):
            raise PrivacyConfigError("DP-SGD needs a per-example decomposable objective: in-batch contrast couples "
                                     "examples, so clipping per example bounds nothing (set loss.image_text_variant=bank "
                                     "and loss.image_image=0, or use privacy=dp_sgd)")
        if model.temperature.log_scale.requires_grad:
            raise PrivacyConfigError("the model was not built for DP-SGD: set model.opacus_compatible=true "
                                     "(privacy=dp_sgd does), which also fixes the CLIP temperature")
        super().__init__(model, objective, cfg, device, total_steps, num_workers, proximal)
        self.sampler = PoissonUnitSampler(record_units, sample_rate, secret_generator())
        self.record_units = torch.tensor(record_units, dtype=torch.long)
        self.clipper = None
        if clipping == "ghost":
            from opacus.optimizers import DPOptimizer

            self.clipper = GhostClipper(self.model, max_grad_norm)
            self.optimizer = DPOptimizer(self.optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                         expected_batch_size=self.sampler.sample_rate * self.sampler.num_units,
                                         loss_reduction="mean", generator=secret_generator(self.device))
        else:
            self.grad_module, self.optimizer = make_private(self.model, self.optimizer, self.sampler, noise_multiplier,
                                                            max_grad_norm, self.device, clipping)

    def _noised(self) -> bool:
        """Noise (and scale) the clipped sum into ``p.grad``; False when Opacus skips the step."""
        if self.clipper is None:
            return self.optimizer.pre_step()
        self.optimizer.add_noise()
        # Opacus' scale_grad counts accumulated per-sample gradients, which ghost clipping never forms.
        for p in self.optimizer.params:
            p.grad /= self.optimizer.expected_batch_size
        return True

    def accepts(self, batch: Batch) -> bool:
        """Every Poisson batch is a step, even an empty one: the accountant counts it."""
        return True

    def _loader(self, dataset: RetinaDataset) -> DataLoader:
        return DataLoader(dataset, batch_sampler=PoissonBatches(self.sampler), collate_fn=collate,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def train_step(self, batch: Batch) -> ObjectiveOutput:
        """One DP-SGD step: per-image gradients, summed per unit, clipped, noised, applied."""
        if len(batch.pair_index) and int(batch.pair_index.max()) >= 0:
            raise PrivacyConfigError("modality partners in a DP-SGD batch: pairing must be off under DP-SGD")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.clipper is not None:
            self.clipper.reset()
        if batch.indices:
            imgs = batch.model_input(self.device, self.model.input_norm)
            graph = self.clipper.weightless() if self.clipper is not None else contextlib.nullcontext()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast), graph:
                out = self.model(imgs, batch.texts)
                loss = self.objective(self.model, out, imgs, batch.label_ids.to(self.device),
                                      batch.pair_index.to(self.device), batch.labels)
            loss.total.backward()
            units = self.record_units[batch.indices]
            if self.clipper is not None:
                self.clipper.clip_and_sum(units, len(batch.indices))
            else:
                sum_per_unit(self.optimizer, units)
        else:
            loss = ObjectiveOutput(torch.zeros(()), {})
            if self.clipper is not None:
                for p in self.optimizer.params:
                    p.summed_grad = torch.zeros_like(p)
            else:
                empty_batch_grads(self.optimizer)
        if self._noised():
            if self.proximal is not None:
                self.proximal.add_gradient(self.model)
            self.optimizer.original_optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss
