"""Image-image contrast between two modalities (or views) of the same patient-eye, as in EyeCLIP
(Shi et al. 2024): the CFP of an eye should embed next to that eye's OCT, away from other eyes.

As FLAIR does for image-text pairs, eyes with the same label set are not treated as negatives:
anchor i's target is spread over every partner with i's labels (its own partner included).
Without labels (id -1) only the same eye is positive, which is plain InfoNCE.
"""

from __future__ import annotations

import torch
from torch import nn

from shared_model.losses.clip_infonce import symmetric_contrastive_loss
from shared_model.losses.flair_soft_targets import label_targets


class ModalityContrastLoss(nn.Module):
    """Symmetric InfoNCE over pairs (anchor i, partner i); rows without a partner are left out."""

    per_example_decomposable = False

    def forward(self, anchor_embeds: torch.Tensor, partner_embeds: torch.Tensor, logit_scale: torch.Tensor,
                has_partner: torch.Tensor, label_ids: torch.Tensor | None = None,
                flip: torch.Tensor | None = None) -> torch.Tensor | None:
        """label_ids: [N] label-set ids of the anchors (None: only the same eye is positive);
        flip: [N] bool, contrast pair i as (partner, anchor), so that one side of every pair is
        one modality (a CFP anchor's OCT and an OCT anchor's CFP would otherwise put CFPs on both
        sides, and the nearest negative of a CFP would be another CFP, not its own eye's OCT).

        Returns None when fewer than two anchors have a partner: one pair has no negatives.
        """
        keep = has_partner.bool()
        if int(keep.sum()) < 2:
            return None
        left, right = anchor_embeds[keep], partner_embeds[keep]
        if flip is not None:
            swap = flip[keep].bool()[:, None]
            left, right = torch.where(swap, right, left), torch.where(swap, left, right)
        targets = label_targets(label_ids[keep]) if label_ids is not None else None
        return symmetric_contrastive_loss(left, right, logit_scale, targets)
