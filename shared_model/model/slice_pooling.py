"""Pooling of OCT B-scan features into one volume feature: the slice-attention adapter of RadCLIP
(Lu et al. 2024, "RadCLIP: Enhancing Radiologic Image Analysis through Contrastive
Language-Image Pre-training") or, as its ablation, the mean over the slices.

A learnable query attends over the slice features, each offset by a learnable encoding of the
slice's position in the volume. Positions are relative depths quantised to the table
(:func:`slice_positions`), so volumes of 16 and 32 B-scans, or a subset of a volume's slices,
share one table. Attention is written with Linear layers (not ``nn.MultiheadAttention``) so that
Opacus can compute per-sample gradients through it.

:class:`SliceLayout` tells a training forward pass which rows of a flat batch of images are the
slices of which item, so 2-D images and volumes train together in one tower pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shared_model.model.tokens import LearnedToken

VOLUME_POOLINGS = ("attention", "mean")


def slice_positions(indices: torch.Tensor, n_frames: int, table_size: int) -> torch.Tensor:
    """Table index of slices ``indices`` of a volume of ``n_frames``: its relative depth
    ``i / (n_frames - 1)`` quantised to ``table_size`` entries."""
    if n_frames <= 1:
        return torch.zeros_like(indices)
    return torch.round(indices.double() * (table_size - 1) / (n_frames - 1)).long()


@dataclass
class SliceLayout:
    """Where each item of a batch is among its image rows: item i is rows ``rows[i, :]`` (-1:
    empty slot); ``volume[i]`` says whether it is pooled from its slices or is its one row."""

    rows: torch.Tensor  # [N, K] long
    positions: torch.Tensor  # [N, K] long, slice positions in the adapter's table
    volume: torch.Tensor  # [N] bool

    def to(self, device: torch.device) -> SliceLayout:
        return SliceLayout(self.rows.to(device), self.positions.to(device), self.volume.to(device))


class SlicePositions(nn.Module):
    """Learnable slice position encoding, a table [1, P, D] (leaf module for Opacus)."""

    def __init__(self, max_slices: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, max_slices, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, S, D]; positions: [N, S] table indices (None: 0 .. S-1)."""
        if positions is None:
            return x + self.weight[:, : x.shape[1]].to(x.dtype)
        return x + self.weight[0][positions].to(x.dtype)


class SliceAttentionPool(nn.Module):
    """Multi-head attention pooling over a variable number of slices."""

    def __init__(self, dim: int, max_slices: int, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"slice pooling width {dim} is not divisible by {num_heads} heads")
        self.max_slices = max_slices
        self.num_heads = num_heads
        self.positions = SlicePositions(max_slices, dim)
        self.query = LearnedToken(dim)
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, slices: torch.Tensor, slice_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """slices: [N, S, D], slice_mask: [N, S] (1 = real slice), positions: [N, S] table
        indices (None: 0 .. S-1) -> volume feature [N, D]."""
        n, s, d = slices.shape
        if s > self.max_slices:
            raise ValueError(f"volume has {s} slices, more than model.volume_max_slices={self.max_slices}")
        h = self.num_heads
        x = self.norm(self.positions(slices, positions))
        q = self.q(self.query(x)).view(n, 1, h, d // h).transpose(1, 2)  # [N, h, 1, d/h]
        k, v = self.kv(x).view(n, s, 2, h, d // h).permute(2, 0, 3, 1, 4)  # each [N, h, S, d/h]
        scores = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5  # [N, h, 1, S]
        if slice_mask is not None:
            scores = scores.masked_fill(~slice_mask.bool()[:, None, None, :], float("-inf"))
        pooled = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, d)
        return self.out(pooled)


class MeanSlicePool(nn.Module):
    """The mean of the slice features (no parameters): the ablation of the attention adapter."""

    def __init__(self, max_slices: int):
        super().__init__()
        self.max_slices = max_slices

    def forward(self, slices: torch.Tensor, slice_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """slices: [N, S, D], slice_mask: [N, S] -> [N, D] (``positions`` is not used)."""
        if slices.shape[1] > self.max_slices:
            raise ValueError(f"volume has {slices.shape[1]} slices, more than "
                             f"model.volume_max_slices={self.max_slices}")
        if slice_mask is None:
            return slices.mean(1)
        weights = slice_mask.to(slices.dtype)[..., None]
        return (slices * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def build_volume_pool(pooling: str, dim: int, max_slices: int, num_heads: int) -> nn.Module | None:
    """The configured volume adapter (``model.volume_pooling``), None when volumes are off."""
    if max_slices <= 0:
        return None
    if pooling not in VOLUME_POOLINGS:
        raise ValueError(f"model.volume_pooling must be one of {VOLUME_POOLINGS}, got {pooling!r}")
    if pooling == "mean":
        return MeanSlicePool(max_slices)
    return SliceAttentionPool(dim, max_slices, num_heads)
