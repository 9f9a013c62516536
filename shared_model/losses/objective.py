"""The EyeCLIP objective: weighted sum of image-text contrast (CLIP, FLAIR soft targets, or —
valid under DP-SGD — contrast against a public bank of prompt embeddings), image-image contrast
across modalities of the same eye, and MAE reconstruction (Shi et al. 2024; default weights
0.75 / 0.75 / 1.0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shared_model.config import LossConfig
from shared_model.losses.bank_contrast import BankContrastLoss, PublicTextBank
from shared_model.losses.clip_infonce import ClipInfoNCELoss
from shared_model.losses.flair_soft_targets import FlairSoftTargetLoss
from shared_model.losses.mae_reconstruction import MAEReconstructionLoss
from shared_model.losses.modality_contrast import ModalityContrastLoss
from shared_model.model.retina_clip import ModelOutput, RetinaCLIP

IMAGE_TEXT_VARIANTS = ("flair", "clip", "bank")
TERMS = ("image_text", "image_image", "mae")


def term_status(loss: LossConfig, pair_modalities: bool, has_decoder: bool, dp_sgd: bool = False) -> dict[str, str]:
    """Each EyeCLIP term: ``"on"`` or why it is configured off (what the console and the report
    say, so a term that never ran is named, never drawn as a zero line)."""
    status = {}
    for name in TERMS:
        if getattr(loss, name) <= 0:
            status[name] = ("off under DP-SGD (in-batch contrast couples examples)"
                            if dp_sgd and name == "image_image" else f"off (loss.{name}=0)")
        elif name == "image_image" and not pair_modalities:
            status[name] = "off (data.pair_modalities=false)"
        elif name == "mae" and not has_decoder:
            status[name] = "off (no MAE decoder: model.mae.enabled=false)"
        else:
            status[name] = "on"
    return status


@dataclass
class ObjectiveOutput:
    """Total loss plus each weighted-in term (detached floats for logging)."""

    total: torch.Tensor
    terms: dict[str, float]


class EyeCLIPObjective(nn.Module):
    """Computes the training loss of one batch from the model's output."""

    def __init__(self, cfg: LossConfig, norm_pix: bool = True):
        super().__init__()
        if cfg.image_text_variant not in IMAGE_TEXT_VARIANTS:
            raise ValueError(f"loss.image_text_variant must be one of {IMAGE_TEXT_VARIANTS}, "
                             f"got {cfg.image_text_variant!r}")
        self.weights = {"image_text": cfg.image_text, "image_image": cfg.image_image, "mae": cfg.mae}
        if min(self.weights.values()) < 0 or max(self.weights.values()) == 0:
            raise ValueError(f"loss weights must be >= 0 with at least one > 0, got {self.weights}")
        self.image_text = {"flair": FlairSoftTargetLoss, "clip": ClipInfoNCELoss,
                           "bank": BankContrastLoss}[cfg.image_text_variant]()
        self.bank = PublicTextBank() if cfg.image_text_variant == "bank" else None
        self.image_image = ModalityContrastLoss()
        self.mae = MAEReconstructionLoss(norm_pix)

    def active_terms(self, model: RetinaCLIP) -> list[nn.Module]:
        """The loss modules that contribute for this model (weight > 0 and, for MAE, a decoder)."""
        terms = []
        if self.weights["image_text"] > 0:
            terms.append(self.image_text)
        if self.weights["image_image"] > 0:
            terms.append(self.image_image)
        if self.weights["mae"] > 0 and model.decoder is not None:
            terms.append(self.mae)
        return terms

    def per_example_decomposable(self, model: RetinaCLIP) -> bool:
        """True when every active term is per-example decomposable (required for DP-SGD)."""
        return all(term.per_example_decomposable for term in self.active_terms(model))

    def forward(self, model: RetinaCLIP, out: ModelOutput, imgs: torch.Tensor, label_ids: torch.Tensor,
                pair_index: torch.Tensor, labels: list[str] | None = None,
                pair_flip: torch.Tensor | None = None) -> ObjectiveOutput:
        """out: model(imgs, texts) on a batch of N anchors followed by their partner images.

        imgs: the batch's image rows [R, 3, H, W] (N + M items; a volume is several rows);
        label_ids: [N + M]; pair_index: [N], position of anchor i's partner in the batch or -1
        when it has none; labels: the N + M label-set strings (needed by the bank variant);
        pair_flip: [N], which pairs to contrast as (partner, anchor) (``Batch.pair_flip``).
        """
        terms: dict[str, torch.Tensor] = {}
        if self.weights["image_text"] > 0:
            if self.bank is not None:
                if labels is None:
                    raise ValueError("the bank image-text loss needs the batch's label sets")
                bank = self.bank.embeddings(model)
                terms["image_text"] = self.image_text(out.image_embeds, out.text_embeds, bank, out.logit_scale,
                                                      self.bank.targets(labels, imgs.device))
            elif isinstance(self.image_text, FlairSoftTargetLoss):
                terms["image_text"] = self.image_text(out.image_embeds, out.text_embeds, out.logit_scale, label_ids)
            else:
                terms["image_text"] = self.image_text(out.image_embeds, out.text_embeds, out.logit_scale)
        if self.weights["image_image"] > 0:
            has_partner = pair_index >= 0
            n = len(pair_index)
            partners = out.image_embeds[pair_index.clamp(min=0)]
            pair_loss = self.image_image(out.image_embeds[:n], partners, out.logit_scale, has_partner, label_ids[:n],
                                         pair_flip)
            if pair_loss is not None:
                terms["image_image"] = pair_loss
        if self.weights["mae"] > 0 and out.mae_pred is not None:
            terms["mae"] = self.mae(model.patchify(imgs), out.mae_pred, out.mae_mask)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return ObjectiveOutput(total, {name: float(value.detach()) for name, value in terms.items()})
