"""The model: masking before the encoder, fixed sin-cos positions, gradients to both towers,
temperature clamp, the shared vs separate contrastive pass, the ResNet tower and volume pooling."""

import dataclasses
import math

import pytest
import torch

from shared_model.config import LossConfig
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.model.slice_pooling import SliceAttentionPool
from shared_model.model.vit_mae import random_masking


def _with(cfg, **changes):
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def tiny(tiny_model_cfg):
    torch.manual_seed(0)
    return build_model(tiny_model_cfg)


def test_random_masking_keeps_quarter_and_restores_order():
    torch.manual_seed(0)
    x = torch.arange(2 * 8, dtype=torch.float).view(2, 8, 1)
    kept, mask, ids_restore = random_masking(x, 0.75)
    assert kept.shape == (2, 2, 1) and mask.sum(1).tolist() == [6.0, 6.0]
    # the kept tokens are exactly the unmasked positions
    for n in range(2):
        assert sorted(kept[n, :, 0].tolist()) == sorted(x[n, mask[n] == 0, 0].tolist())
    assert torch.equal(torch.argsort(ids_restore, 1).argsort(1), ids_restore)


def test_masking_happens_before_the_encoder(tiny):
    imgs = torch.randn(2, 3, 64, 64)
    tokens, mask, _ = tiny.visual.forward_encoder(imgs, 0.75)
    assert tiny.visual.num_patches == 64
    assert tokens.shape == (2, 1 + 16, 192) and mask.shape == (2, 64)
    full, no_mask, _ = tiny.visual.forward_encoder(imgs, 0.0)
    assert full.shape == (2, 65, 192) and no_mask is None


def test_position_embeddings_are_fixed_sincos(tiny):
    names = [n for n, _ in tiny.named_parameters()]
    assert not any("pos_embed" in n for n in names)
    pe = tiny.visual.pos_embed
    assert torch.all(pe[0, 0] == 0) and pe.abs().max() <= 1.0
    assert not torch.allclose(pe[0, 1], pe[0, 2])


def test_gradients_reach_both_towers_and_decoder(tiny_model_cfg):
    cfg = _with(tiny_model_cfg, text=dataclasses.replace(tiny_model_cfg.text, trainable_layers=1))
    torch.manual_seed(0)
    model = build_model(cfg)
    imgs = torch.randn(4, 3, 64, 64)
    out = model(imgs, ["drusen at the macula", "normal fundus", "optic disc cupping", "haemorrhages"])
    loss = EyeCLIPObjective(LossConfig())(model, out, imgs, torch.tensor([0, 1, 2, 3]), torch.tensor([-1, -1, -1, -1]))
    loss.total.backward()
    for name in ("visual.blocks.0.attn.qkv.weight", "visual.patch_embed.proj.weight", "visual.cls_token.token",
                 "image_proj.weight", "text.proj.weight", "text.encoder.encoder.layer.5.attention.self.query.weight",
                 "decoder.pred.weight", "temperature.log_scale"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    frozen = dict(model.named_parameters())["text.encoder.encoder.layer.0.attention.self.query.weight"]
    assert not frozen.requires_grad and frozen.grad is None


def test_temperature_initialised_and_clamped(tiny):
    assert tiny.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        tiny.temperature.log_scale.fill_(10.0)
        assert tiny.logit_scale().item() == pytest.approx(100.0)
        tiny.temperature.log_scale.fill_(-3.0)
        assert tiny.logit_scale().item() == pytest.approx(1.0)
        tiny.temperature.log_scale.fill_(math.log(1 / 0.07))


def _count_encoder_calls(model, imgs):
    calls = []
    handle = model.visual.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    model(imgs, ["a", "b"])
    handle.remove()
    return len(calls)


def test_shared_pass_runs_the_encoder_once_separate_twice(tiny_model_cfg):
    imgs = torch.randn(2, 3, 64, 64)
    assert _count_encoder_calls(build_model(tiny_model_cfg), imgs) == 1
    assert _count_encoder_calls(build_model(_with(tiny_model_cfg, contrast_pass="separate")), imgs) == 2


def test_frozen_text_features_are_cached_and_exact(tiny):
    texts = ["a fundus photograph showing drusen", "a normal fundus"]
    first = tiny.encode_text(texts)
    assert set(texts) <= set(tiny.text._cache)
    tiny.text._cache.clear()
    assert torch.allclose(first, tiny.encode_text(texts), atol=1e-6)
    tiny.to("cpu")  # where it already is (a DP model's move after its calibration): features kept
    assert set(texts) <= set(tiny.text._cache)
    tiny.text.double()  # another dtype: computed again
    assert not tiny.text._cache
    tiny.text.float()


def test_partly_frozen_text_tower_reruns_only_its_trainable_layers(tiny_model_cfg):
    from shared_model.model.text_tower import mean_pool

    torch.manual_seed(0)
    model = build_model(_with(tiny_model_cfg, text=dataclasses.replace(tiny_model_cfg.text, trainable_layers=2)))
    layers = model.text.encoder.encoder.layer
    assert not layers[0].training and layers[-1].training  # frozen layers never apply dropout, even before .train()
    tower = model.text.eval()
    texts = ["drusen", "a colour fundus photograph with haemorrhages in all four quadrants", "a normal fundus"]
    with torch.no_grad():
        batch = tower.tokenize(texts, torch.device("cpu"))
        full = mean_pool(tower.encoder(**batch).last_hidden_state, batch["attention_mask"])
        tower.pooled_features(texts[1:], torch.device("cpu"))  # cached alone, padded to other lengths
        assert torch.allclose(tower.pooled_features(texts, torch.device("cpu")), full, atol=1e-5)
    assert set(texts) <= set(tower._cache)
    calls = []
    handle = tower.encoder.embeddings.register_forward_hook(lambda *_: calls.append(1))
    tower.train()
    tower(texts).sum().backward()
    handle.remove()
    assert calls == []  # the frozen part was not run again
    trained = {name.split(".")[2] for name, p in tower.encoder.named_parameters() if p.grad is not None}
    assert trained == {"4", "5"}  # the last two of MiniLM's six layers
    assert not tower.encoder.encoder.layer[0].training and tower.encoder.encoder.layer[-1].training
    tower.state_cache_bytes = 1
    tower(["one more caption", "and another"])
    assert list(tower._cache) == ["one more caption", "and another"]  # older states evicted, the batch's kept


def test_resnet50_tower_without_mae(tiny_model_cfg):
    cfg = _with(tiny_model_cfg, image=dataclasses.replace(tiny_model_cfg.image, arch="resnet50"),
                mae=dataclasses.replace(tiny_model_cfg.mae, enabled=False))
    model = build_model(cfg)
    out = model(torch.randn(2, 3, 64, 64), ["a", "b"])
    assert out.image_embeds.shape == (2, 256) and out.mae_pred is None
    with pytest.raises(ValueError, match="mae.enabled"):
        build_model(_with(cfg, mae=tiny_model_cfg.mae))


def test_slice_pooling_masks_padding_and_uses_slice_order():
    torch.manual_seed(0)
    pool = SliceAttentionPool(dim=16, max_slices=6, num_heads=4)
    slices = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = pool(slices, mask)
    changed = slices.clone()
    changed[0, 4:] = 100.0  # padding must not matter
    assert torch.allclose(pool(changed, mask)[0], out[0], atol=1e-6)
    swapped = slices[:, [1, 0, 2, 3, 4, 5]]
    assert not torch.allclose(pool(swapped, mask)[0], out[0])
    with pytest.raises(ValueError, match="volume_max_slices"):
        pool(torch.randn(1, 7, 16))


def test_volume_encoding_through_the_model(tiny_model_cfg):
    model = build_model(_with(tiny_model_cfg, volume_max_slices=8))
    emb = model.encode_volume(torch.randn(2, 5, 3, 64, 64))
    assert emb.shape == (2, 256) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_pooled_features_are_batch_centred_on_both_towers(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg).train()
    tokens, _, _ = model.visual.forward_encoder(torch.randn(6, 3, 64, 64), 0.75)
    assert model.image_features(tokens).mean(0).abs().max() < 1e-4
    texts = ["drusen", "a normal fundus", "haemorrhages in four quadrants", "cupping of the optic disc"]
    feats = model.text.norm(model.text.pooled_features(texts, torch.device("cpu")))
    assert feats.mean(0).abs().max() < 1e-4
    model.eval()  # evaluation uses running statistics: one image or one prompt at a time works
    assert model.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 256)
    assert model.encode_text(["drusen"]).shape == (1, 256)
