"""MAE reconstruction loss (He et al. 2022): mean squared error on masked patches only, against
per-patch normalised pixels when ``norm_pix`` is on."""

from __future__ import annotations

import torch
from torch import nn


class MAEReconstructionLoss(nn.Module):
    """Per-example mean of masked-patch MSE, averaged over the batch."""

    per_example_decomposable = True  # example i's loss reads only example i

    def __init__(self, norm_pix: bool = True):
        super().__init__()
        self.norm_pix = norm_pix

    def per_example(self, target_patches: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """target_patches, pred: [N, L, P]; mask: [N, L] (1 = masked) -> losses [N]."""
        target = target_patches
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    def forward(self, target_patches: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.per_example(target_patches, pred, mask).mean()
