"""Image-image contrast between two modalities (or views) of the same patient-eye, as in EyeCLIP
(Shi et al. 2024): the CFP of an eye should embed next to that eye's OCT, away from other eyes."""

from __future__ import annotations

import torch
from torch import nn

from shared_model.losses.clip_infonce import symmetric_contrastive_loss


class ModalityContrastLoss(nn.Module):
    """Symmetric InfoNCE over pairs (anchor i, partner i); rows without a partner are left out."""

    per_example_decomposable = False

    def forward(self, anchor_embeds: torch.Tensor, partner_embeds: torch.Tensor, logit_scale: torch.Tensor,
                has_partner: torch.Tensor) -> torch.Tensor:
        keep = has_partner.bool()
        if int(keep.sum()) < 2:  # one pair has no negatives: nothing to contrast
            return anchor_embeds.sum() * 0.0
        return symmetric_contrastive_loss(anchor_embeds[keep], partner_embeds[keep], logit_scale)
