"""Symmetric image-text InfoNCE loss of CLIP (Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision")."""

from __future__ import annotations

import torch
from torch import nn


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets[i, j] * log softmax(logits[i])_j; targets rows sum to 1."""
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def symmetric_contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
                               targets: torch.Tensor | None = None) -> torch.Tensor:
    """Average of the a->b and b->a cross-entropies of scaled cosine logits.

    a, b: [N, D] L2-normalised; targets: [N, N] row-stochastic soft targets (identity if None).
    """
    logits = logit_scale * a @ b.t()
    if targets is None:
        targets = torch.eye(a.shape[0], device=a.device, dtype=logits.dtype)
    return 0.5 * (soft_target_cross_entropy(logits, targets) + soft_target_cross_entropy(logits.t(), targets.t()))


class ClipInfoNCELoss(nn.Module):
    """CLIP loss: image i's positive is text i, every other text in the batch is a negative."""

    per_example_decomposable = False  # each example's loss depends on the whole batch

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        return symmetric_contrastive_loss(image_embeds, text_embeds, logit_scale)
