"""AdamW with decoupled weight decay on matrices only, a learning rate per part (new layers,
the image tower, the pretrained text encoder), and a cosine schedule with linear warm-up
(transformers' scheduler)."""

from __future__ import annotations

import torch
from transformers import get_cosine_schedule_with_warmup

from shared_model.config import TrainConfig
from shared_model.model.retina_clip import RetinaCLIP


def part_lr(name: str, cfg: TrainConfig) -> float:
    """Learning rate of the parameter called ``name``."""
    if name.startswith("text.encoder."):
        return cfg.text_lr
    if name.startswith("visual.") and cfg.image_lr is not None:
        return cfg.image_lr
    return cfg.lr


def build_optimizer(model: RetinaCLIP, cfg: TrainConfig) -> torch.optim.AdamW:
    """One group per (learning rate, decayed or not): matrices decay, biases/norms/tokens do not."""
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((part_lr(name, cfg), param.ndim >= 2), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "lr": lr, "weight_decay": cfg.weight_decay if decayed else 0.0}
         for (lr, decayed), params in sorted(groups.items())],
        betas=(0.9, 0.95), eps=1e-6)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warm-up for ``cfg.warmup_steps`` then cosine decay to 0 at ``total_steps``."""
    return get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, max(total_steps - 1, 0)), total_steps)
