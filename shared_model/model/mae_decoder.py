"""Light MAE decoder: re-inserts mask tokens and predicts the pixels of every patch (He et al. 2022)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from shared_model.model.tokens import LearnedToken
from shared_model.model.vit_mae import _init_weights, sincos_pos_embed


class MAEDecoder(nn.Module):
    """Narrow transformer decoder from encoder tokens (visible only) to per-patch pixels."""

    def __init__(self, grid_size: tuple[int, int], patch_size: int, encoder_width: int, width: int,
                 depth: int, num_heads: int, in_chans: int = 3):
        super().__init__()
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = LearnedToken(width)
        self.register_buffer("pos_embed", sincos_pos_embed(grid_size, width), persistent=False)
        self.blocks = nn.ModuleList(Block(width, num_heads, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch_size * patch_size * in_chans)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """tokens: [N, 1 + L_keep, D_enc], ids_restore: [N, L] -> predicted patches [N, L, p*p*3]."""
        x = self.embed(tokens)
        n_masked = ids_restore.shape[1] + 1 - x.shape[1]
        patches = torch.cat([x[:, 1:], self.mask_token(x.detach(), count=n_masked)], dim=1)  # [N, L, D] shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]
