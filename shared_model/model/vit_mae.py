"""ViT image tower with MAE random masking before the encoder (He et al. 2022, "Masked
Autoencoders Are Scalable Vision Learners"; FLIP, Li et al. 2023, uses the same masked pass
for contrastive learning).

Blocks come from timm; position embeddings are fixed 2-D sin-cos (timm's builder), so the
tower has no position parameter to learn or to leak resolution assumptions into.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from shared_model.model.tokens import LearnedToken


def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of patches per sample, by sorting per-sample noise (MAE).

    x: [N, L, D] patch tokens. Returns the kept tokens [N, L_keep, D], the binary mask
    [N, L] (1 = removed, in original order) and ids_restore [N, L] to unshuffle.
    """
    n, length, dim = x.shape
    len_keep = int(round(length * (1 - mask_ratio)))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore


def sincos_pos_embed(grid_size: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [1, 1 + H*W, dim] with a zero row for the class token."""
    patches = build_sincos2d_pos_embed(list(grid_size), dim=dim)  # [H*W, dim]
    return torch.cat([torch.zeros(1, dim), patches], dim=0).unsqueeze(0)


class MaskedViT(nn.Module):
    """ViT encoder that can drop a random fraction of patches before the first block."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, global_pool: str = "avg", in_chans: int = 3):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"model.image.global_pool must be 'token' or 'avg', got {global_pool!r}")
        # --- patch embedding and fixed positions -------------------------------------------
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, width)
        self.cls_token = LearnedToken(width)
        self.register_buffer("pos_embed", sincos_pos_embed(self.patch_embed.grid_size, width), persistent=False)
        # --- transformer ----------------------------------------------------------------
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.global_pool = global_pool
        self.width = width
        self.patch_size = patch_size
        self.apply(_init_weights)
        # MAE initialises the patch projection like a linear layer.
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(width, -1))

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def forward_encoder(self, imgs: torch.Tensor,
                        mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """imgs: [N, 3, H, W] -> tokens [N, 1 + L_keep, D], mask [N, L] or None, ids_restore or None."""
        x = self.patch_embed(imgs)  # [N, L, D]
        x = x + self.pos_embed[:, 1:, :].to(x.dtype)
        mask = ids_restore = None
        if mask_ratio > 0:
            x, mask, ids_restore = random_masking(x, mask_ratio)
        cls = self.cls_token(x.detach()) + self.pos_embed[:, :1, :].to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [N, 1 + L, D] -> pooled features [N, D]."""
        return tokens[:, 0] if self.global_pool == "token" else tokens[:, 1:].mean(dim=1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
