"""Slice-attention pooling of OCT B-scan embeddings into one volume embedding (RadCLIP-style
adapter, Lu et al. 2024, "RadCLIP: Enhancing Radiologic Image Analysis through Contrastive
Language-Image Pre-training").

A learnable query attends over the slice embeddings, each offset by a learnable slice
position encoding. Attention is written with Linear layers (not ``nn.MultiheadAttention``)
so that Opacus can compute per-sample gradients through it.
"""

from __future__ import annotations

import torch
from torch import nn

from shared_model.model.tokens import LearnedToken


class SlicePositions(nn.Module):
    """Learnable slice position encoding [1, S, D] (leaf module for Opacus)."""

    def __init__(self, max_slices: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, max_slices, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[:, : x.shape[1]].to(x.dtype)


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

    def forward(self, slices: torch.Tensor, slice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """slices: [N, S, D], slice_mask: [N, S] (1 = real slice) -> volume embedding [N, D]."""
        n, s, d = slices.shape
        if s > self.max_slices:
            raise ValueError(f"volume has {s} slices, more than model.volume_max_slices={self.max_slices}")
        h = self.num_heads
        x = self.norm(self.positions(slices))
        q = self.q(self.query(x)).view(n, 1, h, d // h).transpose(1, 2)  # [N, h, 1, d/h]
        k, v = self.kv(x).view(n, s, 2, h, d // h).permute(2, 0, 3, 1, 4)  # each [N, h, S, d/h]
        scores = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5  # [N, h, 1, S]
        if slice_mask is not None:
            scores = scores.masked_fill(~slice_mask.bool()[:, None, None, :], float("-inf"))
        pooled = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, d)
        return self.out(pooled)
