"""Centring of pooled features against a fixed centre: the per-example replacement of the
batch centring (``BatchNorm1d`` without affine) for DP-SGD.

Both towers put their pooled features along one dominant direction, which the batch centring
of RetinaCLIP removes (as MoCo v3 and DINO centre). Batch statistics mix the examples of a
batch, so under DP-SGD they are replaced: where a tower's features are fixed (a frozen text
encoder; a fully frozen image tower), by the difference between each L2-normalised feature and a
fixed centre, DINO's centring with its moving average frozen. The centre comes from public data
(the prompt corpus, for text) or from one differentially private release at a site
(``shared_model/privacy/feature_centre.py``, for images); until it is set, ``calibrated`` is 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FixedCentring(nn.Module):
    """``(f / ||f|| - centre) * sqrt(width)``: per example, no parameters, no batch statistics."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("centre", torch.zeros(width))
        # A float so that it travels with the exchanged buffers and averages to 1 once every site set it.
        self.register_buffer("calibrated", torch.zeros(()))
        self.scale = math.sqrt(width)  # unit-scale coordinates, as the batch centring gives

    def set_centre(self, centre: torch.Tensor) -> None:
        """Fix the centre (a mean of L2-normalised features, [width])."""
        self.centre.copy_(centre)
        self.calibrated.fill_(1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: [N, width] -> centred [N, width]."""
        return (F.normalize(features, dim=-1) - self.centre.to(features.dtype)) * self.scale
