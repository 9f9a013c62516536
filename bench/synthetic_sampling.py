"""Synthetic sampling: images/s of the corpus generator with the fast schedulers (DDIM,
DPM-Solver++, 25 steps) against the 1000-step DDPM reference: same model, same batch,
classifier-free guidance on. Weights do not change the cost, so an untrained generator of the
default size is timed. DDPM's cost is linear in its steps, so 100 of them (20 in the quick
mode) are timed and scaled to 1000."""

from __future__ import annotations

import time

import torch

from bench.common import Row, check, synchronize
from shared_model.config import GeneratorConfig
from synthetic.conditioning import Conditioning
from synthetic.generator import ConditionalUNet
from synthetic.sampling import denoise, sampling_scheduler

TARGET = ">= 20"  # half the 40x fewer network evaluations: schedulers differ in per-step cost
DDPM_STEPS = 1000


def images_per_second(model: ConditionalUNet, name: str, steps: int, batch: int, dev: torch.device) -> float:
    """Throughput of one sampling call of ``batch`` images with ``steps`` scheduler steps."""
    condition = torch.stack([model.conditioning.vector(("normal",), "CFP")] * batch)
    scheduler = sampling_scheduler(name, model.cfg.num_train_timesteps)
    synchronize(dev)
    start = time.perf_counter()
    denoise(model, condition, scheduler, steps, 2.0, torch.Generator().manual_seed(0), dev)
    synchronize(dev)
    return batch / (time.perf_counter() - start)


def measure(dev: torch.device, quick: bool, steps: int = 25) -> list[Row]:
    batch = 2 if quick else 8
    model = ConditionalUNet(GeneratorConfig(), Conditioning(("normal",), ("CFP",))).to(dev)
    timed = 20 if quick else 100  # DDPM's cost is linear in its steps: 100 timed, scaled to 1000
    ddpm = images_per_second(model, "ddpm", timed, batch, dev) * timed / DDPM_STEPS
    rows = []
    for name in ("ddim", "dpm_solver"):
        fast = images_per_second(model, name, 5 if quick else steps, batch, dev)
        if quick:
            fast *= 5 / steps
        ratio = fast / ddpm
        rows.append(Row("synthetic sampling", f"{name}, {steps} steps, batch {batch}, {model.cfg.image_size} px",
                        f"{fast:.3f} img/s", f"{ddpm:.4f} img/s DDPM {DDPM_STEPS} steps", ratio, TARGET,
                        check(ratio, TARGET)))
    return rows
