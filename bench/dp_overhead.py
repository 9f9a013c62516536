"""DP overhead: time of one DP-SGD step (per-unit clipping, Gaussian noise;
``shared_model/privacy/dp_step.py``) over one ordinary step of the same model, batch
and objective (the DP objective: MAE + contrast against the public prompt bank). Three ways to clip
per unit are timed side by side: ghost norms + book-keeping (``privacy.clipping=ghost``, the
default: per-image gradients only where they cost less than ghost norms), and Opacus' per-image
gradients from hooks or from functorch, summed per unit. The units are patients with one to three
images each. Models: the ViT presets (target: 1.25 x the plain step), and the pretrained
EfficientNet-Lite0 tower of the real-data preset at its 128 px (pointwise and depthwise
convolutions, frozen BatchNorms and stem; target 1.5 x; Opacus' functorch is not timed there).
A last row per case splits the ghost step's own work: clipping (the norms and the clipped sum,
which holds the weight-gradient products the DP backward pass skips) and noise (drawn, added)."""

from __future__ import annotations

import statistics

import torch

from bench.common import Row, check, interleaved_seconds, timed_calls
from bench.training_step import synthetic_batch
from shared_model.conf import compose_app
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.privacy.dp_trainer import DPSGDTrainer
from shared_model.privacy.plan import DPPlan
from shared_model.runtime import seed_everything
from shared_model.train.trainer import LocalTrainer

TARGET = "<= 1.25"  # the ViT presets' (also the GPU check's, bench/gpu_check.py)
CNN_TARGET = "<= 1.5"
MODES = ("ghost", "hooks", "functorch")


def patient_units(batch_size: int) -> list[int]:
    """The privacy unit of each image of a batch: half the patients bring two images."""
    return [k // 2 if k % 4 < 2 else k for k in range(batch_size)]


def dp_trainers(preset: str, units: list[int], dev: torch.device, overrides: tuple[str, ...] = (),
                modes: tuple[str, ...] = MODES) -> tuple[dict, int]:
    """The non-private trainer and one DP-SGD trainer per clipping mode, all from the same weights."""
    cfg = compose_app("train", [f"model={preset}", "privacy=dp_sgd", *overrides])
    trainers = {}
    for mode in ("none", *modes):
        seed_everything(0)
        model = build_model(cfg.model)
        objective = EyeCLIPObjective(cfg.loss, cfg.model.mae.norm_pix_loss)
        if mode == "none":
            trainers[mode] = LocalTrainer(model, objective, cfg.train, dev)
        else:
            plan = DPPlan("patient", len(set(units)), 0.1, 1.0, 1.0, 1e-5, cfg.privacy.accountant, 10.0, mode)
            trainers[mode] = DPSGDTrainer(model, objective, cfg.train, dev, units, plan)
    return trainers, cfg.model.image.image_size


# preset -> (overrides, clipping modes timed, target). With trainable text layers the public prompt
# bank (~1,000 prompts) goes through them every step, in the DP and the plain step alike (about 1.8 s
# of a 2.3 s small step on 2 cores): that shared cost would hide the DP overhead, so the small
# preset's text tower is frozen here.
CASES = {"tiny": ((), MODES, TARGET),
         "small": (("model.text.trainable_layers=0",), MODES, TARGET),
         "efficientnet_lite0": ((), ("ghost", "hooks"), CNN_TARGET)}


def measure(dev: torch.device, quick: bool) -> list[Row]:
    cases = [("tiny", 8)] if quick else [("tiny", 16), ("tiny", 32), ("small", 16), ("efficientnet_lite0", 16)]
    rows = []
    for preset, batch_size in cases:
        overrides, modes, target = CASES[preset]
        units = patient_units(batch_size)
        trainers, size = dp_trainers(preset, units, dev, overrides, modes)
        batch = synthetic_batch(batch_size, size)
        step = trainers["ghost"].dp  # where the ghost step's extra time goes: clipping, then noise
        clipping: list[float] = []
        noising: list[float] = []
        step.clipper.clip_and_sum = timed_calls(clipping, step.clipper.clip_and_sum, dev)
        step.noise = timed_calls(noising, step.noise, dev)
        seconds = interleaved_seconds({mode: (lambda t=t, batch=batch: t.train_step(batch))
                                       for mode, t in trainers.items()}, dev, 2 if quick else 8)
        params = sum(p.numel() for p in trainers["none"].model.parameters() if p.requires_grad)
        for mode in modes:
            trainers[mode].close()
        for mode in modes:
            ratio = seconds[mode] / seconds["none"]
            model = f"{size} px, {params / 1e6:.1f} M trained" + (", text frozen" if overrides else "")
            method = "ghost norms (ours)" if mode == "ghost" else f"Opacus {mode}"
            rows.append(Row("DP overhead", f"{preset} ({model}), batch {batch_size}, {method}",
                            f"{seconds[mode] * 1e3:.0f} ms DP-SGD step", f"{seconds['none'] * 1e3:.0f} ms step",
                            ratio, target, check(ratio, target)))
        clip, noise = statistics.median(clipping), statistics.median(noising) - statistics.median(clipping)
        rows.append(Row("DP overhead", f"{preset}, batch {batch_size}, ghost norms: clipping and noise",
                        f"{clip * 1e3:.0f} ms clipping + {noise * 1e3:.0f} ms noise",
                        f"{seconds['none'] * 1e3:.0f} ms step", (clip + noise) / seconds["none"],
                        note="clipping holds the weight-gradient products the DP backward pass skips"))
    return rows
