"""Training step: images/s of one CLIP + MAE step (forward, EyeCLIP loss, backward, AdamW) with
the shared masked forward (``model.contrast_pass=shared``: one encoder pass over the 25 % of
visible patches feeds both the contrastive and the MAE branch, FLIP-style) against separate
masked and unmasked passes (``separate``). Same weights, same batch, calls interleaved.
Presets: tiny and small, plus base on CUDA."""

from __future__ import annotations

import random

import torch

from bench.common import Row, check, interleaved_seconds
from shared_model.conf import compose_app
from shared_model.data.dataset import Batch
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.prompts import build_caption
from shared_model.runtime import seed_everything
from shared_model.train.trainer import LocalTrainer

TARGET = ">= 1.6"
LABELS = ["normal", "glaucoma", "moderate_npdr", "amd", "dme", "pathologic_myopia"]


def synthetic_batch(n: int, size: int, seed: int = 0) -> Batch:
    """``n`` random images with captions of real label sets (the cost does not depend on pixels)."""
    rng = random.Random(seed)
    labels = [rng.choice(LABELS) for _ in range(n)]
    ids = {label: i for i, label in enumerate(sorted(set(labels)))}
    return Batch(images=torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)),
                 texts=[build_caption([label], rng) for label in labels],
                 label_ids=torch.tensor([ids[label] for label in labels]), pair_index=torch.full((n,), -1),
                 labels=labels, indices=list(range(n)))


def trainer_for(preset: str, overrides: list[str], dev: torch.device) -> tuple[LocalTrainer, int]:
    """A LocalTrainer of the preset (seed 0, so every variant starts from the same weights)."""
    cfg = compose_app("train", [f"model={preset}", *overrides])
    seed_everything(0)
    model = build_model(cfg.model)
    objective = EyeCLIPObjective(cfg.loss, cfg.model.mae.norm_pix_loss)
    return LocalTrainer(model, objective, cfg.train, dev), cfg.model.image.image_size


def measure(dev: torch.device, quick: bool) -> list[Row]:
    presets = ["tiny"] if quick else ["tiny", "small"] + (["base"] if dev.type == "cuda" else [])
    batch_size = 8 if quick else 32
    repeats = 2 if quick else 10
    rows = []
    for preset in presets:
        trainers = {mode: trainer_for(preset, [f"model.contrast_pass={mode}"], dev) for mode in ("shared", "separate")}
        size = trainers["shared"][1]
        batch = synthetic_batch(batch_size, size)
        seconds = interleaved_seconds({mode: (lambda t=t, batch=batch: t.train_step(batch))
                                       for mode, (t, _) in trainers.items()}, dev, repeats)
        shared, separate = batch_size / seconds["shared"], batch_size / seconds["separate"]
        ratio = shared / separate
        rows.append(Row("training step", f"{preset}, {size} px, batch {batch_size}", f"{shared:.1f} img/s shared",
                        f"{separate:.1f} img/s separate", ratio, TARGET, check(ratio, TARGET)))
    return rows
