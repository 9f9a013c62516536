"""Sampling speed of the synthetic-corpus generator: images/s with the fast schedulers (DDIM,
DPM-Solver++, 25 steps by default) against the 1000-step DDPM reference, same model, same batch,
classifier-free guidance on. Weights do not change the cost, so an untrained generator of the
configured size is timed. A ratio, measured in one run on whatever device is present.

  python bench/synthetic_sampling.py [--steps 25] [--batch 8] [--ddpm-steps 1000] [--quick]

``--quick`` (CI) times 50 reference steps and scales, to check the harness still works.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from shared_model.config import GeneratorConfig
from shared_model.train.trainer import resolve_device
from synthetic.conditioning import Conditioning
from synthetic.generator import ConditionalUNet
from synthetic.sampling import denoise, sampling_scheduler


def images_per_second(model: ConditionalUNet, name: str, steps: int, batch: int, device: torch.device) -> float:
    """Throughput of one sampling call of ``batch`` images with ``steps`` scheduler steps."""
    condition = torch.stack([model.conditioning.vector(("normal",), "CFP")] * batch)
    scheduler = sampling_scheduler(name, model.cfg.num_train_timesteps)
    start = time.perf_counter()
    denoise(model, condition, scheduler, steps, 2.0, torch.Generator().manual_seed(0), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="runs/bench/synthetic_sampling.json")
    args = parser.parse_args()
    device = resolve_device("auto")
    model = ConditionalUNet(GeneratorConfig(), Conditioning(("normal",), ("CFP",))).to(device)
    reference_steps = 50 if args.quick else args.ddpm_steps
    # DDPM's cost is linear in its steps: a shortened run times the reference per step.
    ddpm = images_per_second(model, "ddpm", reference_steps, args.batch, device) * reference_steps / args.ddpm_steps
    rows = {"device": str(device), "batch": args.batch, "ddpm_steps": args.ddpm_steps,
            "ddpm_images_per_s": ddpm, "timed_ddpm_steps": reference_steps}
    for name in ("ddim", "dpm_solver"):
        fast = images_per_second(model, name, args.steps, args.batch, device)
        rows[name] = {"steps": args.steps, "images_per_s": fast, "speedup_vs_ddpm": fast / ddpm}
        print(f"{name:10s} {args.steps:4d} steps: {fast:8.2f} img/s  ({fast / ddpm:.1f}x DDPM {args.ddpm_steps} steps, "
              f"{ddpm:.3f} img/s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
