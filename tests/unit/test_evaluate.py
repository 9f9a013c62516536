"""The evaluator glue: task construction, per-modality tasks, unreadable images skipped and listed."""

import shutil

import numpy as np
import pytest
import torch

from shared_model.config import EvalConfig, EvalSetConfig
from shared_model.data.manifest import load_manifest
from shared_model.eval.evaluate import evaluate_model, load_eval_records, task_targets
from shared_model.model import build_model


def test_task_targets_take_the_first_task_label(small_phantom):
    records = load_manifest(small_phantom / "heldout" / "manifest.csv").records
    classes, y = task_targets(records, None)
    assert classes == sorted({r.labels[0] for r in records})
    assert all(classes[t] == r.labels[0] for r, t in zip(records, y))
    only, y2 = task_targets(records, ["amd", "cataract"])
    assert only == ["amd", "cataract"] and set(y2.tolist()) <= {-1, 0, 1} and (y2 == -1).any()


def test_evaluate_model_reports_per_modality_and_skips_unreadable(small_phantom, tmp_path, tiny_model_cfg):
    site = tmp_path / "heldout"
    shutil.copytree(small_phantom / "heldout", site)
    records = load_manifest(site / "manifest.csv").records
    broken = next(r for r in records if r.modality == "CFP")
    broken.image.write_bytes(b"\x89PNG truncated")
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)
    cfg = EvalConfig(sets=[EvalSetConfig(name="h", path=str(site / "manifest.csv"))], kshot=[1], kshot_trials=2,
                     probe_folds=2)
    results = evaluate_model(model, cfg, 64, torch.device("cpu"))
    n_cfp = sum(r.modality == "CFP" for r in records)
    assert results["zero_shot"]["h/CFP"]["n"] == n_cfp - 1
    assert results["zero_shot"]["h/OCT"]["n"] == len(records) - n_cfp
    assert any(broken.image.name in reason for reason in results["skipped"]["h/CFP"])
    assert results["retrieval"]["h/CFP"]["n_images"] == n_cfp - 1
    assert np.isfinite(results["linear_probe"]["h/CFP"]["mean"]["aca"])


def test_unknown_eval_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        load_eval_records(EvalSetConfig(name="x", path=str(tmp_path), format="zip"))
