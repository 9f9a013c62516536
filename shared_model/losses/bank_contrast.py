"""Image-text contrast against a public bank of negatives — per-example decomposable, so it is
a valid objective under DP-SGD (unlike in-batch InfoNCE, where every example's loss reads the
whole batch).

Each image's candidates are its own caption and the prompt-ensemble embeddings of every category
of the expert-knowledge dictionary: public text that holds no record's data. Targets follow
FLAIR's label-aware soft targets (Silva-Rodríguez et al. 2025): the own caption and the bank
entries of the image's labels share the mass uniformly. The bank is detached, like the negative
queue of MoCo (He et al. 2020), so example i's loss and its gradient depend on example i only.
"""

from __future__ import annotations

import torch
from torch import nn

from shared_model.prompts import CATEGORIES, get_category, prompt_ensemble

BANK_MODALITIES = ("CFP", "OCT")
CHUNK = 128  # prompts encoded together, grouped by length so that little of a chunk is padding


class PublicTextBank:
    """Class embeddings of every dictionary category (prompt ensembles over ``BANK_MODALITIES``)."""

    def __init__(self, categories: list[str] | None = None):
        self.keys = list(categories or CATEGORIES)
        self.index = {key: i for i, key in enumerate(self.keys)}
        self.prompts = [[p for m in BANK_MODALITIES for p in prompt_ensemble(key, m)] for key in self.keys]

    @torch.no_grad()
    def embeddings(self, model: nn.Module) -> torch.Tensor:
        """[K, D] L2-normalised class embeddings from ``model``'s current text tower (no gradient;
        the tower runs in eval mode so no batch statistic is touched)."""
        emb = self.encode(model, model.encode_text)
        sizes = [len(p) for p in self.prompts]
        means = torch.stack([chunk.mean(0) for chunk in emb.split(sizes)])
        return nn.functional.normalize(means, dim=-1)

    @torch.no_grad()
    def encode(self, model: nn.Module, encode) -> torch.Tensor:
        """``encode(texts)`` of every prompt of the bank, in bank order, in eval mode, run in
        chunks of similar length."""
        flat = [p for prompts in self.prompts for p in prompts]
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
        was_training = model.text.training
        model.text.eval()
        try:
            out = torch.cat([encode([flat[i] for i in order[start:start + CHUNK]]).float()
                             for start in range(0, len(order), CHUNK)])
        finally:
            model.text.train(was_training)
        return out[torch.as_tensor(order, device=out.device).argsort()]

    def targets(self, label_sets: list[str], device: torch.device) -> torch.Tensor:
        """[N, K] multi-hot of each row's labels (``;``-joined label-set strings)."""
        hot = torch.zeros(len(label_sets), len(self.keys), device=device)
        for row, labels in enumerate(label_sets):
            for label in filter(None, labels.split(";")):
                hot[row, self.index[get_category(label).key]] = 1.0
        return hot


class BankContrastLoss(nn.Module):
    """Cross-entropy of each image over [own caption, public bank] with label-aware soft targets."""

    per_example_decomposable = True  # example i's loss reads example i and public text only

    def per_example(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, bank: torch.Tensor,
                    logit_scale: torch.Tensor, bank_targets: torch.Tensor) -> torch.Tensor:
        """image_embeds, text_embeds: [N, D]; bank: [K, D] detached; bank_targets: [N, K] -> [N]."""
        own = (image_embeds * text_embeds).sum(dim=-1, keepdim=True)
        logits = logit_scale * torch.cat([own, image_embeds @ bank.t().to(image_embeds.dtype)], dim=1)
        targets = torch.cat([torch.ones_like(own), bank_targets.to(own.dtype)], dim=1)
        targets = targets / targets.sum(dim=1, keepdim=True)
        return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, bank: torch.Tensor,
                logit_scale: torch.Tensor, bank_targets: torch.Tensor) -> torch.Tensor:
        return self.per_example(image_embeds, text_embeds, bank, logit_scale, bank_targets).mean()
