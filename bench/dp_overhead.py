"""DP overhead: time of one DP-SGD step (Opacus per-sample gradients, per-unit sums, clipping,
noise; ``shared_model/privacy/dp_trainer.py``) over one ordinary step of the same model, batch
and objective (the DP objective: MAE + contrast against the public prompt bank). Opacus'
per-sample gradient modes are timed side by side: hooks (what the trainer uses) and functorch;
the units are patients with one or two images each, as in the phantom data."""

from __future__ import annotations

import torch

from bench.common import Row, check, interleaved_seconds
from bench.training_step import synthetic_batch
from shared_model.conf import compose_app
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.privacy.dp_trainer import DPSGDTrainer
from shared_model.train.trainer import LocalTrainer, seed_everything

TARGET = "<= 1.5"
MODES = ("hooks", "functorch")


def dp_trainers(preset: str, units: list[int], dev: torch.device) -> tuple[dict, int]:
    """The non-private trainer and one DP-SGD trainer per Opacus mode, all from the same weights."""
    cfg = compose_app("train", [f"model={preset}", "privacy=dp_sgd", "data.pair_modalities=false"])
    trainers = {}
    for mode in ("none", *MODES):
        seed_everything(0)
        model = build_model(cfg.model)
        objective = EyeCLIPObjective(cfg.loss, cfg.model.mae.norm_pix_loss)
        if mode == "none":
            trainers[mode] = LocalTrainer(model, objective, cfg.train, dev)
        else:
            trainers[mode] = DPSGDTrainer(model, objective, cfg.train, dev, units, 0.1, 1.0, 1.0,
                                          grad_sample_mode=mode)
    return trainers, cfg.model.image.image_size


def measure(dev: torch.device, quick: bool) -> list[Row]:
    presets = ["tiny"] if quick else ["tiny", "small"]
    batch_size = 8 if quick else 16
    units = [k // 2 if k % 4 < 2 else k for k in range(batch_size)]  # half the patients bring two images
    rows = []
    for preset in presets:
        trainers, size = dp_trainers(preset, units, dev)
        batch = synthetic_batch(batch_size, size)
        seconds = interleaved_seconds({mode: (lambda t=t: t.train_step(batch)) for mode, t in trainers.items()}, dev,
                                      2 if quick else 8)
        params = sum(p.numel() for p in trainers["none"].model.parameters() if p.requires_grad)
        for mode in MODES:
            ratio = seconds[mode] / seconds["none"]
            rows.append(Row("DP overhead", f"{preset} ({params / 1e6:.1f} M trained), batch {batch_size}, "
                            f"Opacus {mode}", f"{seconds[mode] * 1e3:.0f} ms DP-SGD step",
                            f"{seconds['none'] * 1e3:.0f} ms step", ratio, TARGET, check(ratio, TARGET)))
    return rows
