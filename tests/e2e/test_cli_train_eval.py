"""End to end through the console scripts, as a user runs them: ``retina-data`` makes a phantom,
``retina-train`` trains, checkpoints, evaluates and resumes, ``retina-eval`` scores the
checkpoint on the real images; bad inputs end with one clear line and status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared_model.data.manifest import load_manifest
from tests.fixtures import processes

BIN = Path(sys.executable).parent
TINY_PHANTOM = ["phantom.sites=1", "phantom.images_per_site=24", "phantom.heldout_images=24", "phantom.seed=3"]
FAST = ["train.steps=3", "train.batch_size=8", "train.warmup_steps=1", "data.num_workers=0",
        "eval.kshot=[1]", "eval.kshot_trials=2", "eval.probe_folds=2"]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return processes.run(args, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    run = root / "run"
    result = _run([str(BIN / "retina-train"), f"phantom.root={root / 'phantom'}", f"run_dir={run}",
                   *TINY_PHANTOM, *FAST])
    assert result.returncode == 0, result.stderr[-3000:]
    return root, run, result


def test_train_writes_a_complete_run_folder(trained):
    root, run, result = trained
    assert (root / "phantom" / "phantom.json").is_file()  # generated on demand
    for name in ("config.yaml", "metrics.jsonl", "train_summary.json", "checkpoint/model.safetensors",
                 "checkpoint/config.json", "checkpoint/trainer_state.pt", "eval/metrics.json", "eval/summary.md"):
        assert (run / name).is_file(), name
    assert "run_dir: " + str(run) in (run / "config.yaml").read_text()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    zero_shot = metrics["zero_shot"]["heldout/CFP"]
    # Every held-out fundus image scored once, and the ACA is the balanced accuracy of those predictions
    # (3 steps stay at chance: the figure itself says nothing of learning).
    fundus = [r for r in load_manifest(root / "phantom" / "heldout" / "manifest.csv").records if r.modality == "CFP"]
    confusion = np.array(zero_shot["confusion_matrix"])
    assert zero_shot["n"] == len(fundus) == confusion.sum() == 24
    assert zero_shot["aca"] == pytest.approx(np.mean(np.diag(confusion) / confusion.sum(axis=1)))
    assert "heldout/CFP" in metrics["linear_probe"] and "heldout/CFP" in metrics["retrieval"]
    assert list((run / "eval").glob("confusion_*.png"))
    assert "ACA" in result.stdout
    report = (run / "report.html").read_text()
    assert 'id="loss-per-step"' in report and 'id="confusion-heldout/CFP"' in report


def test_exported_checkpoint_is_evaluated_by_someone_without_the_run(trained, tmp_path):
    """retina-export, then retina-eval from another folder on the export alone: the same scores."""
    root, run, _ = trained
    exported = _run([str(BIN / "retina-export"), str(run), "--out", str(tmp_path / "model")])
    assert exported.returncode == 0, exported.stderr
    assert (sorted(p.name for p in (tmp_path / "model").iterdir())
            == ["MODEL_CARD.md", "config.json", "model.safetensors"])
    elsewhere = tmp_path / "someone-else"
    elsewhere.mkdir()
    scored = processes.run([str(BIN / "retina-eval"), "checkpoint=../model", f"phantom.root={root / 'phantom'}",
                            *TINY_PHANTOM, "eval.linear_probe=false", "eval.retrieval=false", "eval.kshot=[]",
                            "out_dir=scores"], cwd=elsewhere, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert scored.returncode == 0, scored.stderr[-3000:]
    mine = json.loads((elsewhere / "scores" / "metrics.json").read_text())["zero_shot"]["heldout/CFP"]
    theirs = json.loads((run / "eval" / "metrics.json").read_text())["zero_shot"]["heldout/CFP"]
    assert mine["confusion_matrix"] == theirs["confusion_matrix"] and mine["aca"] == pytest.approx(theirs["aca"])


def test_resume_continues_from_the_checkpoint(trained):
    root, run, _ = trained
    result = _run([str(BIN / "retina-train"), f"phantom.root={root / 'phantom'}", f"run_dir={run}", *TINY_PHANTOM,
                   *FAST, "train.steps=5", "resume=true", "eval=none"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "checkpoint" / "config.json").read_text())["extra"]["step"] == 5
    assert "resumed" in result.stdout + result.stderr


def test_eval_on_the_real_images(trained, real_dir, tmp_path):
    _, run, _ = trained
    result = _run([str(BIN / "retina-eval"), f"checkpoint={run / 'checkpoint'}", "eval=real", f"out_dir={tmp_path}"],
                  RETINAFL_REAL_DATA=str(real_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    oct_task = metrics["zero_shot"]["kermany_oct/OCT"]
    assert oct_task["n"] == 32 and oct_task["class_names"] == ["cnv", "dme", "drusen", "normal"]
    assert metrics["zero_shot"]["fundus_misc/CFP"]["n"] == 12
    assert "kermany_oct/OCT" in metrics["linear_probe"]


def test_bad_inputs_end_with_a_clear_message(trained, tmp_path):
    root, run, _ = trained
    unknown = _run([str(BIN / "retina-train"), "model.image.widht=3", f"run_dir={tmp_path / 'x'}"])
    assert unknown.returncode != 0 and "widht" in unknown.stderr
    not_ckpt = _run([str(BIN / "retina-eval"), f"checkpoint={tmp_path}", "eval=none", f"out_dir={tmp_path / 'o'}"])
    assert not_ckpt.returncode == 2 and "not a RetinaFL checkpoint" in not_ckpt.stderr
    assert "Traceback" not in not_ckpt.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("image,patient_id,modality,labels,report\nnope.png,p1,CFP,normal,\n")
    refused = _run([str(BIN / "retina-train"), "data=manifests", f"data.manifests=[{bad}]", "eval=none",
                    f"run_dir={tmp_path / 'y'}", *FAST])
    assert refused.returncode == 2 and f"{bad}: row 1, field 'image': file not found" in refused.stderr
    validate = _run([str(BIN / "retina-data"), "validate", str(bad), str(root / "phantom" / "site_0" / "manifest.csv")])
    assert validate.returncode == 1 and "file not found" in validate.stdout and "all rows valid" in validate.stdout


def test_dp_sgd_training_keeps_a_ledger_and_its_checkpoint_evaluates(trained, real_dir, tmp_path):
    root, _, _ = trained
    run = tmp_path / "dp"
    result = _run([str(BIN / "retina-train"), f"phantom.root={root / 'phantom'}", f"run_dir={run}", *TINY_PHANTOM,
                   *FAST, "privacy=dp_sgd", "privacy.noise_multiplier=1.0", "eval=none"])
    assert result.returncode == 0, result.stderr[-3000:]
    ledger = json.loads((run / "privacy_ledger.json").read_text())["body"]
    assert ledger["unit"] == "patient" and ledger["history"][0][2] == 3
    saved = json.loads((run / "checkpoint" / "config.json").read_text())
    assert saved["model"]["opacus_compatible"] and saved["extra"]["privacy"]["epsilon"] > 0
    scored = _run([str(BIN / "retina-eval"), f"checkpoint={run / 'checkpoint'}", "eval=real",
                   f"out_dir={tmp_path / 'e'}"], RETINAFL_REAL_DATA=str(real_dir))
    assert scored.returncode == 0, scored.stderr[-3000:]
    refused = _run([str(BIN / "retina-train"), f"phantom.root={root / 'phantom'}", f"run_dir={tmp_path / 'bad'}",
                    *TINY_PHANTOM, *FAST, "privacy.mode=dp-sgd"])
    assert refused.returncode == 2 and "couples examples" in refused.stderr and "Traceback" not in refused.stderr
