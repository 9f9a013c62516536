"""RetinaCLIP: image tower + text tower + MAE decoder + temperature, as one module.

Follows open_clip's split (``encode_image`` / ``encode_text``) and EyeCLIP's combination of
CLIP, MAE and cross-modality objectives (Shi et al. 2024, "EyeCLIP: A visual-language
foundation model for multi-modal ophthalmic image analysis"). In training, one masked pass
serves both the MAE loss and the contrastive embedding (FLIP) unless ``contrast_pass`` asks
for a separate unmasked pass; evaluation always encodes unmasked images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shared_model.model.mae_decoder import MAEDecoder
from shared_model.model.slice_pooling import SliceLayout
from shared_model.model.text_tower import TextTower
from shared_model.model.tokens import Temperature


@dataclass
class ModelOutput:
    """What one training forward pass returns (embeddings are L2-normalised)."""

    image_embeds: torch.Tensor  # [N, D], one per item (image or volume)
    text_embeds: torch.Tensor | None  # [N, D]
    logit_scale: torch.Tensor  # scalar
    mae_pred: torch.Tensor | None  # [R, L, p*p*3], one per image row (a volume: per slice)
    mae_mask: torch.Tensor | None  # [R, L], 1 = masked


class RetinaCLIP(nn.Module):
    """The retinal vision-language model."""

    def __init__(self, visual: nn.Module, text: TextTower, embed_dim: int, init_temperature: float,
                 decoder: MAEDecoder | None = None, mask_ratio: float = 0.75, contrast_pass: str = "shared",
                 volume_pool: nn.Module | None = None, input_norm: str = "imagenet"):
        super().__init__()
        if contrast_pass not in ("shared", "separate"):
            raise ValueError(f"model.contrast_pass must be 'shared' or 'separate', got {contrast_pass!r}")
        self.visual = visual
        # Centres pooled image features across the batch (running mean at evaluation), as MoCo v3
        # and DINO do: without it every image embedding shared one dominant direction (mean
        # cosine 0.99 after short runs), so zero-shot arg-max fell on the same class for all images.
        self.image_norm = nn.BatchNorm1d(visual.width, affine=False)
        self.image_proj = nn.Linear(visual.width, embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=visual.width ** -0.5)
        self.text = text
        self.temperature = Temperature(init_temperature)
        self.decoder = decoder
        self.mask_ratio = mask_ratio if decoder is not None else 0.0
        self.contrast_pass = contrast_pass
        self.volume_pool = volume_pool
        self.input_norm = input_norm  # how images are normalised before the model (data.preprocess)
        self.dp_fixes: list[str] = []  # layers changed for DP-SGD (model.opacus_compatible), for the privacy report

    # --- encoders --------------------------------------------------------------------------
    def encode_image(self, imgs: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """imgs: [N, 3, H, W] -> embeddings [N, D] from the unmasked image."""
        tokens, _, _ = self.visual.forward_encoder(imgs, 0.0)
        emb = self.image_proj(self.image_features(tokens))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """texts -> embeddings [N, D]."""
        emb = self.text(texts)
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_volume(self, slices: torch.Tensor, slice_mask: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        """slices: [N, S, 3, H, W] B-scans of a volume (positions: [N, S] slice position table
        indices, None: 0 .. S-1) -> one embedding per volume [N, D]."""
        if self.volume_pool is None:
            raise ValueError("this model has no volume adapter: set model.volume_max_slices > 0")
        n, s = slices.shape[:2]
        tokens, _, _ = self.visual.forward_encoder(slices.flatten(0, 1), 0.0)
        per_slice = self.image_features(tokens).view(n, s, -1)  # [N, S, width]
        emb = self.image_proj(self.volume_pool(per_slice, slice_mask, positions))
        return F.normalize(emb, dim=-1) if normalize else emb

    def tower_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, 3, H, W] -> the image tower's pooled features [N, width], before any centring
        or projection (what a linear probe of the tower and the DP feature centre use)."""
        return self.visual.pool(self.visual.forward_encoder(imgs, 0.0)[0])

    def image_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder tokens [N, T, width] -> pooled, batch-centred features [N, width]."""
        return self.image_norm(self.visual.pool(tokens))

    def pool_items(self, features: torch.Tensor, layout: SliceLayout | None) -> torch.Tensor:
        """Row features [R, width] -> item features [N, width]: a volume's slices pooled by the
        adapter, a 2-D image's row as it is (``layout`` None: every row is an item)."""
        if layout is None:
            return features
        gathered = features[layout.rows.clamp(min=0)]  # [N, K, width]
        items = gathered[:, 0]
        if bool(layout.volume.any()):
            if self.volume_pool is None:
                raise ValueError("a batch of volumes needs the volume adapter: set model.volume_max_slices > 0")
            index = layout.volume.nonzero()[:, 0]
            pooled = self.volume_pool(gathered[index], layout.rows[index] >= 0, layout.positions[index])
            items = items.index_put((index,), pooled)
        return items

    def logit_scale(self) -> torch.Tensor:
        return self.temperature()

    # --- training pass ---------------------------------------------------------------------
    def forward(self, imgs: torch.Tensor, texts: list[str] | None = None,
                layout: SliceLayout | None = None) -> ModelOutput:
        """imgs: [R, 3, H, W] image rows (+ N texts) -> per item embeddings, logit scale and the
        MAE prediction per row. Without ``layout`` every row is an item (N = R); with it, volume
        items are pooled from their slice rows through the adapter, so it trains."""
        tokens, mask, ids_restore = self.visual.forward_encoder(imgs, self.mask_ratio)
        mae_pred = self.decoder(tokens, ids_restore) if self.decoder is not None else None
        if self.contrast_pass == "separate" and self.mask_ratio > 0:
            tokens, _, _ = self.visual.forward_encoder(imgs, 0.0)
        image_embeds = F.normalize(self.image_proj(self.pool_items(self.image_features(tokens), layout)), dim=-1)
        text_embeds = self.encode_text(texts) if texts is not None else None
        return ModelOutput(image_embeds, text_embeds, self.logit_scale(), mae_pred, mask)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W] -> patches [N, L, p*p*C] in the decoder's output order."""
        p = self.visual.patch_size
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)
