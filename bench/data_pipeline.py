"""Data pipeline: images/s one loader worker delivers to training from real JPEGs (the ODIR-5K
fundus photographs of ../shared/data/odir_sites, 256 px: decoded, FOV-cropped, resized to 224 px,
augmentation parameters drawn) against the images/s one training step of the pretrained
EfficientNet-Lite0 tower consumes at 224 px (batch augmentation included, as in training):
decoded at each use, while filling the decoded cache (``data.cache_dir``, cold) and read from it
(warm). Ratio = loader images/s / step images/s, target >= 2 (the cold fill, a one-off pass, has
none). The full run adds the larger real JPEGs of ../shared/data/real (496 to 1411 px) and rows
of training fed by its own DataLoader (0 or 1 worker, decoded or cached) against the step alone:
what loading costs the step when both share the cores (no target)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.common import Row, check, median_seconds
from bench.training_step import synthetic_batch, trainer_for
from shared_model.data.augment import draw_params
from shared_model.data.dataset import EpochBatchSampler, RetinaDataset, collate
from shared_model.data.decoded_cache import DecodedCache, open_cache
from shared_model.data.manifest import Record, load_manifest
from shared_model.train.trainer import LocalTrainer

TARGET = ">= 2"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ODIR = SHARED / "odir_sites" / "site0.csv"
REAL = SHARED / "real"
WORKERS = 1  # one loader process beside training on a 2-core site machine


def real_records(n: int) -> list[Record]:
    """``n`` records cycling through the real fundus and OCT JPEGs of ``REAL``."""
    images = sorted(REAL.rglob("*.jp*g"))
    picked = [images[i % len(images)] for i in range(n)]
    return [Record(image, f"p{i}-{image.stem}", "", "OCT" if "oct" in image.parent.parent.name else "CFP", "",
                   ("normal",), "", "train", i, "bench") for i, image in enumerate(picked)]


def loader_rate(dataset: RetinaDataset, batch_size: int, batches: int) -> float:
    """Images/s delivered by the training DataLoader (first batch, which starts the worker, excluded)."""
    loader = DataLoader(dataset, batch_sampler=EpochBatchSampler(len(dataset), batch_size, 0), collate_fn=collate,
                        num_workers=WORKERS)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    images = sum(len(next(iterator).indices) for _ in range(batches))
    return images / (time.perf_counter() - start)


def step_rate(trainer: LocalTrainer, dev: torch.device, batch_size: int, repeats: int) -> float:
    """Images/s of one training step on an augmented in-memory batch (no loader)."""
    batch = synthetic_batch(batch_size, 224)
    gen = torch.Generator().manual_seed(0)
    batch.aug = torch.stack([draw_params(gen, colour=True) for _ in range(batch_size)])
    return batch_size / median_seconds(lambda: trainer.train_step(batch), dev, repeats, warmup=2)


def fed_rows(trainer: LocalTrainer, case: str, records: list[Record], cache: DecodedCache, step: float,
             steps: int) -> list[Row]:
    """Images/s of training fed by its own DataLoader (0 or 1 worker, decoded or from the cache,
    the worker's start included) against the step alone: what loading costs the step on shared cores."""
    rows = []
    for workers in (0, WORKERS):
        for source, used in (("decoded", None), ("cache warm", cache)):
            trainer.num_workers = workers
            dataset = RetinaDataset(records, 224, train=True, text_source="caption", cache=used)
            stats = trainer.run(dataset, steps, progress=False)
            rate = stats.images / stats.seconds
            rows.append(Row("data pipeline", f"{case}, training fed by {workers} worker(s), {source}",
                            f"{rate:.1f} img/s trained", f"{step:.1f} img/s step alone", rate / step))
    return rows


def pipeline_rows(name: str, records: list[Record], trainer: LocalTrainer, step: float, batch_size: int,
                  batches: int, decoded_target: str = TARGET, fed_steps: int = 0) -> list[Row]:
    """Decoded at each use, cold cache fill and warm cache, each against the step's ``step``
    images/s; with ``fed_steps``, also training fed by the loader (:func:`fed_rows`)."""
    case = f"{name}, 224 px, augmented, batch {batch_size}"
    loaded = f"{case}, {WORKERS} worker"
    decoded = loader_rate(RetinaDataset(records, 224, train=True, text_source="caption"), batch_size, batches)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = open_cache(records, 224, tmp, workers=WORKERS)
        fill = len(records) / (time.perf_counter() - start)
        warm = loader_rate(RetinaDataset(records, 224, train=True, text_source="caption", cache=cache), batch_size,
                           batches)
        fed = fed_rows(trainer, case, records, cache, step, fed_steps) if fed_steps else []
    trained = f"{step:.1f} img/s trained"
    note = "" if decoded >= 2 * step else "under 2x: what data.cache_dir is for"
    return [Row("data pipeline", f"{loaded}, decoded", f"{decoded:.1f} img/s loaded", trained, decoded / step,
                decoded_target, check(decoded / step, decoded_target), note),
            Row("data pipeline", f"{loaded}, cache cold fill", f"{fill:.1f} img/s filled ({len(records) / fill:.1f} s)",
                trained, fill / step, "", None, f"{cache.cached} of {len(records)} images cached"),
            Row("data pipeline", f"{loaded}, cache warm", f"{warm:.1f} img/s loaded", trained, warm / step, TARGET,
                check(warm / step, TARGET)), *fed]


def measure(dev, quick: bool) -> list[Row]:
    if not ODIR.is_file():
        return [Row("data pipeline", "ODIR JPEGs", "not measured", "", float("nan"), TARGET, None,
                    f"{ODIR} not found")]
    batch_size, batches = (4, 2) if quick else (32, 10)
    # The real-data recipe's EfficientNet-Lite0 (pretrained, bench/real_data_experiment.py) at 224 px.
    trainer, _ = trainer_for("efficientnet_lite0", ["model.image.image_size=224", "train=real",
                                                    f"train.batch_size={batch_size}"], dev)
    step = step_rate(trainer, dev, batch_size, 2 if quick else 5)
    n = (batches + 2) * batch_size
    odir = load_manifest(ODIR).records[:n]
    rows = pipeline_rows(f"ODIR {len(odir)} JPEGs 256 px", odir, trainer, step, batch_size, batches,
                         fed_steps=0 if quick else 12)
    if not quick and REAL.is_dir():
        real = real_records(n)
        files = len({r.image for r in real})
        rows += pipeline_rows(f"real JPEGs 496-1411 px ({files} files as {len(real)})", real, trainer, step,
                              batch_size, batches, "")
    return rows
