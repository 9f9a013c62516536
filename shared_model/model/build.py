"""Builds a :class:`RetinaCLIP` from a :class:`ModelConfig` (the only place that reads model config)."""

from __future__ import annotations

import logging

from shared_model.config import ModelConfig
from shared_model.model.mae_decoder import MAEDecoder
from shared_model.model.resnet_tower import ResNetTower
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.model.slice_pooling import SliceAttentionPool
from shared_model.model.text_tower import TextTower
from shared_model.model.vit_mae import MaskedViT

log = logging.getLogger(__name__)

IMAGE_ARCHS = ("vit", "resnet50")


def build_model(cfg: ModelConfig, pretrained_text: bool = True) -> RetinaCLIP:
    """Instantiate the model. ``pretrained_text=False`` skips loading text weights (a checkpoint follows)."""
    img = cfg.image
    if img.arch == "vit":
        visual = MaskedViT(img.image_size, img.patch_size, img.width, img.depth, img.num_heads,
                           img.mlp_ratio, img.global_pool)
    elif img.arch == "resnet50":
        if cfg.mae.enabled:
            raise ValueError("model.mae.enabled=true needs model.image.arch=vit: MAE masking is undefined for a ResNet")
        visual = ResNetTower("resnet50")
    else:
        raise ValueError(f"model.image.arch must be one of {IMAGE_ARCHS}, got {img.arch!r}")
    if img.init_checkpoint:
        from shared_model.model.weights_init import load_image_tower_weights

        load_image_tower_weights(visual, img.init_checkpoint)
    decoder = None
    if cfg.mae.enabled:
        decoder = MAEDecoder(visual.patch_embed.grid_size, img.patch_size, img.width, cfg.mae.decoder_width,
                             cfg.mae.decoder_depth, cfg.mae.decoder_heads)
    text = TextTower(cfg.text.path, cfg.embed_dim, cfg.text.max_length, cfg.text.trainable_layers, pretrained_text)
    volume_pool = SliceAttentionPool(visual.width, cfg.volume_max_slices, cfg.volume_heads) if cfg.volume_max_slices else None
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
