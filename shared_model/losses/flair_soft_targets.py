"""Label-aware image-text contrast of FLAIR (Silva-Rodríguez et al. 2025, "A Foundation
Language-Image Model of the Retina", MedIA; arXiv 2308.07898).

Texts of the same category are not negatives: the target of image i is spread uniformly
over every text j whose label set equals i's. Examples without labels (label id -1) keep
the CLIP target (only their own text), so with all-distinct labels this equals CLIP.
"""

from __future__ import annotations

import torch
from torch import nn

from shared_model.losses.clip_infonce import symmetric_contrastive_loss


def label_targets(label_ids: torch.Tensor) -> torch.Tensor:
    """label_ids: [N] ints (-1 = unlabelled) -> row-normalised [N, N] soft targets."""
    same = (label_ids[:, None] == label_ids[None, :]) & (label_ids[:, None] >= 0)
    same = same | torch.eye(len(label_ids), dtype=torch.bool, device=label_ids.device)
    same = same.float()
    return same / same.sum(dim=1, keepdim=True)


class FlairSoftTargetLoss(nn.Module):
    """CLIP loss with positives = all pairs sharing the same label set."""

    per_example_decomposable = False

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                label_ids: torch.Tensor) -> torch.Tensor:
        return symmetric_contrastive_loss(image_embeds, text_embeds, logit_scale, label_targets(label_ids))
