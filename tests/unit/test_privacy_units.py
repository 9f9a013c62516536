"""The patient privacy unit spans a site's manifests: a patient listed in two manifests is one
unit, so the patient-level ε covers every image of that patient."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from shared_model.config import DataConfig
from shared_model.data.manifest import load_training_records
from shared_model.privacy.units import unit_ids


def _manifest(path: Path, modality: str, patients: list[str]) -> Path:
    rows = [{"image": f"{modality}-{i}.png", "patient_id": p, "modality": modality, "labels": "normal",
             "report": "normal fundus"} for i, p in enumerate(patients)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        Image.new("RGB", (8, 8)).save(path.parent / row["image"])
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_one_patient_in_two_manifests_of_a_site_is_one_patient_unit(tmp_path):
    cfp = _manifest(tmp_path / "cfp" / "manifest.csv", "CFP", ["p1", "p2", "p1"])
    oct_ = _manifest(tmp_path / "oct" / "manifest.csv", "OCT", ["p1", "p3"])
    records = load_training_records(DataConfig(manifests=[str(cfp), str(oct_)], split=None))
    units = unit_ids(records, "patient")
    assert [r.patient_id for r in records] == ["p1", "p2", "p1", "p1", "p3"]
    assert units == [0, 1, 0, 0, 2]  # p1's three images, from both manifests, are one unit
    assert unit_ids(records, "image") == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="privacy.unit must be one of"):
        unit_ids(records, "study")
