"""Data pipeline: decoded + preprocessed images/s from a JPEG manifest (the real fundus and OCT
JPEGs of ../shared/data/real, 512 to 1411 px, copied several times) through the training
``RetinaDataset`` and ``DataLoader`` with 0, 1 and 2 worker processes, against the rate at
which one training step of the ``small`` preset consumes images on the same device. The
loader must outpace the step: ratio = loader images/s / step images/s, target >= 1."""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from bench.common import Row, check, median_seconds
from bench.training_step import synthetic_batch, trainer_for
from shared_model.data.dataset import EpochBatchSampler, RetinaDataset, collate
from shared_model.data.manifest import load_manifest

TARGET = ">= 1"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def jpeg_manifest(folder: Path, copies: int) -> Path:
    """A manifest of ``copies`` copies of every real JPEG (a manifest lists a file once)."""
    rows = []
    for k in range(copies):
        for image in sorted(REAL.rglob("*.jp*g")):
            modality = "OCT" if "oct" in str(image.parent.parent.name) else "CFP"
            copy = folder / f"{k}_{image.name}"
            shutil.copyfile(image, copy)
            rows.append({"image": copy.name, "patient_id": f"p{k}-{image.stem}", "modality": modality,
                         "labels": "normal", "report": ""})
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def loader_rate(dataset: RetinaDataset, batch_size: int, workers: int, batches: int) -> float:
    """Images/s delivered by the training DataLoader (first batch, which starts the workers, excluded)."""
    loader = DataLoader(dataset, batch_sampler=EpochBatchSampler(len(dataset), batch_size, 0), collate_fn=collate,
                        num_workers=workers, persistent_workers=False)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    images = sum(len(next(iterator).indices) for _ in range(batches))
    return images / (time.perf_counter() - start)


def measure(dev, quick: bool) -> list[Row]:
    if not REAL.is_dir():
        return [Row("data pipeline", "real JPEGs", "not measured", "", float("nan"), TARGET, None,
                    f"{REAL} not found")]
    preset = "tiny" if quick else "small"
    batch_size = 8 if quick else 32
    trainer, size = trainer_for(preset, [], dev)
    batch = synthetic_batch(batch_size, size)
    step_rate = batch_size / median_seconds(lambda: trainer.train_step(batch), dev, 2 if quick else 5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        records = load_manifest(jpeg_manifest(Path(tmp), 2 if quick else 8)).records
        dataset = RetinaDataset(records, size, train=True, text_source="caption")
        for workers in ([0] if quick else [0, 1, 2]):
            rate = loader_rate(dataset, batch_size, workers, 2 if quick else 8)
            ratio = rate / step_rate
            rows.append(Row("data pipeline", f"{preset}, {size} px, batch {batch_size}, {workers} workers",
                            f"{rate:.1f} img/s loaded", f"{step_rate:.1f} img/s trained", ratio, TARGET,
                            check(ratio, TARGET)))
    return rows
