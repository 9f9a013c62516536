"""AdamW with decoupled weight decay on matrices only, a smaller learning rate for the pretrained
text encoder, and a cosine schedule with linear warm-up (transformers' scheduler)."""

from __future__ import annotations

import torch
from transformers import get_cosine_schedule_with_warmup

from shared_model.config import TrainConfig
from shared_model.model.retina_clip import RetinaCLIP


def build_optimizer(model: RetinaCLIP, cfg: TrainConfig) -> torch.optim.AdamW:
    """Four groups: {new, pretrained text encoder} x {decayed matrices, undecayed biases/norms/tokens}."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        pretrained = name.startswith("text.encoder.")
        groups.setdefault((pretrained, param.ndim >= 2), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "lr": cfg.text_lr if pretrained else cfg.lr,
          "weight_decay": cfg.weight_decay if decayed else 0.0}
         for (pretrained, decayed), params in sorted(groups.items())],
        betas=(0.9, 0.95), eps=1e-6)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warm-up for ``cfg.warmup_steps`` then cosine decay to 0 at ``total_steps``."""
    return get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, max(total_steps - 1, 0)), total_steps)
