"""Sampling a synthetic corpus: a fast scheduler (DDIM, Song et al. 2021; DPM-Solver++, Lu et al.
2022) built from the training schedule, classifier-free guidance, images written in shards of
PNGs, and a manifest in RetinaFL's format whose ``report`` is a caption built from the
conditioning labels with the expert-knowledge dictionary (VisionCLIP-style descriptions)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared_model.atomic_files import atomic_path, write_json_atomic
from shared_model.config import SynthSampleConfig
from shared_model.prompts import build_caption, get_category
from shared_model.runtime import resolve_device
from synthetic.conditioning import parse_mix
from synthetic.generator import ConditionalUNet
from synthetic.training import noise_scheduler

SCHEDULERS = ("ddim", "dpm_solver", "ddpm")
MANIFEST = "manifest.csv"
CORPUS_FILE = "corpus.json"
COLUMNS = ("image", "patient_id", "eye", "modality", "study_id", "labels", "report", "split")


def sampling_scheduler(name: str, num_train_timesteps: int):
    """The sampler for ``name``, sharing the training schedule's betas."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    base = noise_scheduler(num_train_timesteps)
    if name == "ddpm":
        return base
    if name == "ddim":
        return DDIMScheduler.from_config(base.config)
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler.from_config(base.config, algorithm_type="dpmsolver++")
    raise ValueError(f"sample.scheduler must be one of {SCHEDULERS}, got {name!r}")


@torch.no_grad()
def denoise(model: ConditionalUNet, condition: torch.Tensor, scheduler, steps: int, guidance: float,
            generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Images [N, 3, S, S] in [0, 1] for the conditions [N, K + M]."""
    model.eval()
    size = model.cfg.image_size
    x = torch.randn((len(condition), 3, size, size), generator=generator).to(device)
    scheduler.set_timesteps(steps)
    condition = condition.to(device)
    for t in scheduler.timesteps:
        timesteps = torch.full((len(x),), int(t), device=device)
        if guidance != 1.0:
            both = model(torch.cat([x, x]), torch.cat([timesteps, timesteps]),
                         torch.cat([condition, torch.zeros_like(condition)]))
            cond, uncond = both.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        else:
            eps = model(x, timesteps, condition)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).cpu()


def draw_conditions(n: int, label_mix: dict, modality_mix: dict[str, float],
                    seed: int) -> list[tuple[tuple[str, ...], str]]:
    """``n`` (label set, modality) pairs with the requested shares: exact counts (largest
    remainders), in a seeded random order."""
    def counts(mix: dict) -> list:
        raw = {k: v * n for k, v in mix.items()}
        out = {k: int(v) for k, v in raw.items()}
        for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[:n - sum(out.values())]:
            out[k] += 1
        return [k for k, c in out.items() for _ in range(c)]

    rng = random.Random(seed)
    labels, modalities = counts(label_mix), counts(modality_mix)
    rng.shuffle(labels)
    rng.shuffle(modalities)
    return list(zip(labels, modalities))


def resolve_mixes(cfg: SynthSampleConfig, meta: dict) -> tuple[dict, dict[str, float]]:
    """Label-set and modality mixes: the user's, or the generator's training frequencies."""
    if not (cfg.labels and cfg.modalities) and "label_mix" not in meta["extra"]:
        raise ValueError("this generator was trained federated and keeps no training mix: "
                         "give --labels and --modalities")
    if cfg.labels:
        label_mix = {(get_category(name).key,): share for name, share in parse_mix(cfg.labels, "--labels").items()}
    else:
        label_mix = {tuple(k.split(";")) if k else (): v for k, v in meta["extra"]["label_mix"].items()}
    modality_mix = parse_mix(cfg.modalities, "--modalities") if cfg.modalities else meta["extra"]["modality_mix"]
    return label_mix, modality_mix


def sample_corpus(model: ConditionalUNet, meta: dict, cfg: SynthSampleConfig, out_dir: Path,
                  device: str = "auto", progress: bool = True) -> Path:
    """Write ``cfg.n`` images and ``manifest.csv`` (+ ``corpus.json``, provenance) into ``out_dir``."""
    if cfg.n <= 0:
        raise ValueError(f"--n must be positive, got {cfg.n}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists():
        raise FileExistsError(f"{out_dir / MANIFEST} exists: sample into a new folder")
    dev = resolve_device(device)
    model.to(dev)
    label_mix, modality_mix = resolve_mixes(cfg, meta)
    conditions = draw_conditions(cfg.n, label_mix, modality_mix, cfg.seed)
    for labels, modality in conditions[:1]:
        model.conditioning.vector(labels, modality)  # unknown labels/modalities fail before any work
    scheduler = sampling_scheduler(cfg.scheduler, model.cfg.num_train_timesteps)
    steps = model.cfg.num_train_timesteps if cfg.scheduler == "ddpm" else cfg.steps
    generator = torch.Generator().manual_seed(cfg.seed)
    captions = random.Random(cfg.seed)
    rows = []
    columns = (TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("sample", total=cfg.n)
        for start in range(0, cfg.n, cfg.batch_size):
            chunk = conditions[start:start + cfg.batch_size]
            vectors = torch.stack([model.conditioning.vector(labels, modality) for labels, modality in chunk])
            images = denoise(model, vectors, scheduler, steps, cfg.guidance, generator, dev)
            for offset, ((labels, modality), image) in enumerate(zip(chunk, images)):
                index = start + offset
                rel = Path(f"images/shard_{index // cfg.shard_size:04d}/syn_{index:06d}.png")
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(pixels).save(out_dir / rel)
                caption = build_caption(list(labels), captions, modality) if labels else ""
                rows.append({"image": str(rel), "patient_id": f"syn-{index:06d}", "eye": "", "modality": modality,
                             "study_id": f"syn-{index:06d}", "labels": ";".join(labels), "report": caption,
                             "split": "train"})
            bar.update(task, advance=len(chunk))
    with atomic_path(out_dir / MANIFEST) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    write_json_atomic(out_dir / CORPUS_FILE, {"n": cfg.n, "sample": cfg.__dict__, "steps": steps,
                                              "label_mix": {";".join(k): v for k, v in label_mix.items()},
                                              "modality_mix": modality_mix, "generator": meta})
    return out_dir / MANIFEST


def read_corpus(folder: Path) -> dict:
    """The corpus description written by :func:`sample_corpus`."""
    return json.loads((folder / CORPUS_FILE).read_text())
