"""ResNet-50 image tower from timm for FLAIR / VisionCLIP-style runs (no masking, no MAE)."""

from __future__ import annotations

import timm
import torch
from torch import nn


class ResNetTower(nn.Module):
    """timm ResNet trunk with global average pooling, exposing the same interface as MaskedViT."""

    def __init__(self, name: str = "resnet50"):
        super().__init__()
        self.trunk = timm.create_model(name, pretrained=False, num_classes=0, global_pool="avg")
        self.width = self.trunk.num_features

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, None, None]:
        """imgs: [N, 3, H, W] -> pooled features as a single token [N, 1, C]; masking is not defined for CNNs."""
        if mask_ratio > 0:
            raise ValueError("a ResNet tower cannot mask patches: set model.mae.enabled=false")
        return self.trunk(imgs).unsqueeze(1), None, None

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]
