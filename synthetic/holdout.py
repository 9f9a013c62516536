"""The held-out reference of the memorisation audit: real images of patients the generator never
trained on. A site's val/test rows when its manifests have them; otherwise (a hospital's training
manifest usually marks no split) ``retina-synth train`` keeps a seeded share of the site's
patients (``train.holdout_fraction``) out of training, every row of a patient on the same side,
and lists them in the run folder's ``holdout.json``, so that the audit compares the corpus with
exactly those rows. ``holdout.json`` names patients and images: it stays at the site, like the
run folder's ``config.yaml``."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import replace
from pathlib import Path

from shared_model.atomic_files import write_json_atomic
from shared_model.config import DataConfig, SynthAppConfig
from shared_model.data.manifest import ManifestError, Record, load_training_records

log = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.json"
HELD_OUT_SPLITS = ("val", "test")


def split_records(data: DataConfig, split: str) -> list[Record]:
    """The rows of ``split`` in ``data.manifests`` (an empty list when there are none)."""
    try:
        return load_training_records(replace(data, split=split))
    except ManifestError:
        raise
    except ValueError:  # no rows of that split
        return []


def choose_patients(records: list[Record], fraction: float, seed: int) -> list[str]:
    """``fraction`` of the patients of ``records`` (rounded; at least one, never all of them),
    drawn with ``seed`` from the sorted patient ids, so the draw does not depend on row order."""
    if fraction == 0:
        return []
    patients = sorted({r.patient_id for r in records})
    if len(patients) < 2:
        raise ValueError(f"train.holdout_fraction={fraction}: the training rows have {len(patients)} patient, none "
                         "to spare for the audit's held-out set; add val/test rows of other patients, or set "
                         "train.holdout_fraction=0 and give held-out rows at audit time")
    count = min(max(round(fraction * len(patients)), 1), len(patients) - 1)
    return sorted(random.Random(seed).sample(patients, count))


def hold_out(app: SynthAppConfig, records: list[Record], resuming: bool) -> tuple[list[Record], list[Record]]:
    """Split the training rows ``records`` into those the generator trains on and those it holds
    out for the audit. A new run holds out patients only when ``data.manifests`` has no val/test
    rows and writes ``holdout.json`` (or removes a previous run's); a resumed run keeps the
    patients its ``holdout.json`` lists (none without one: its earlier steps saw every patient)."""
    path = Path(app.run_dir) / HOLDOUT_FILE
    if resuming:
        recorded = read_holdout(path)
        patients = set(recorded["patients"]) if recorded else set()
    elif any(split_records(app.data, split) for split in HELD_OUT_SPLITS):
        patients = set()
    else:
        patients = set(choose_patients(records, app.train.holdout_fraction, app.train.seed))
    train = [r for r in records if r.patient_id not in patients]
    heldout = [r for r in records if r.patient_id in patients]
    if not resuming:
        if heldout:
            write_json_atomic(path, {"fraction": app.train.holdout_fraction, "seed": app.train.seed,
                                     "patients": sorted(patients), "training_rows": len(train),
                                     "rows": [{"manifest": r.source, "row": r.row, "image": str(r.image.resolve())}
                                              for r in heldout]})
        else:
            path.unlink(missing_ok=True)
    if heldout:
        log.info("held out %d of %d patients (%d rows) for the audit: %s", len(patients),
                 len({r.patient_id for r in records}), len(heldout), path)
    return train, heldout


def read_holdout(path: Path) -> dict | None:
    """A run folder's ``holdout.json`` (``None`` when it has none)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not a hold-out list ({exc}); retrain the generator to rewrite it") from exc
