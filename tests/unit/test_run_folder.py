"""The run folder check before training: a read-only folder or a full disk is refused up front,
naming the folder and the space, and ``retina-train`` refuses before its first step."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple

import pytest

from shared_model.run_folder import MARGIN_BYTES, check_run_folder

Usage = namedtuple("Usage", "total used free")


def test_a_writable_folder_with_room_passes_and_is_created(tmp_path):
    folder = check_run_folder(tmp_path / "a" / "run", 1024)
    assert folder.is_dir() and list(folder.iterdir()) == []  # the probe file is gone


def test_too_little_free_space_is_refused_naming_folder_free_and_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2 ** 40, 2 ** 40 - 10 * 2 ** 20, 10 * 2 ** 20))
    with pytest.raises(ValueError) as info:
        check_run_folder(tmp_path / "run", 500 * 2 ** 20)
    assert str(info.value) == (f"run folder {tmp_path / 'run'}: 10 MiB free on its filesystem, the run needs about "
                               f"{500 + MARGIN_BYTES // 2 ** 20} MiB for its checkpoints and reports; free some space "
                               "or set run_dir to a folder on another disk")


def test_a_folder_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=f"run folder {tmp_path / 'file' / 'run'}: cannot be written "
                                         r"\(\[Errno 20\] Not a directory"):
        check_run_folder(tmp_path / "file" / "run", 0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"cannot be written \(\[Errno 13\] Permission denied"):
            check_run_folder(folder, 0)
    finally:
        folder.chmod(0o700)


def test_training_refuses_a_full_disk_before_the_first_step(small_phantom, tmp_path, monkeypatch):
    from shared_model.conf import compose_app
    from shared_model.train import centralized

    cfg = compose_app("train", [f"phantom.root={small_phantom}", "phantom.sites=2", "phantom.images_per_site=40",
                                "phantom.heldout_images=30", f"run_dir={tmp_path / 'run'}", "eval=none",
                                "train.steps=2", "data.num_workers=0"])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2 ** 40, 2 ** 40 - 2 ** 20, 2 ** 20))
    monkeypatch.setattr(centralized.LocalTrainer, "run", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=f"run folder {tmp_path / 'run'}: 1 MiB free on its filesystem, the run "
                                         "needs about"):
        centralized.run_training(cfg, progress=False)
    assert list((tmp_path / "run").iterdir()) == []  # no config, no checkpoint


def test_checkpoint_estimate_covers_what_a_checkpoint_writes(small_phantom, tiny_model_cfg, tmp_path):
    import torch

    from shared_model.config import LossConfig, TrainConfig
    from shared_model.data.dataset import RetinaDataset
    from shared_model.data.manifest import load_manifest
    from shared_model.losses import EyeCLIPObjective
    from shared_model.model import build_model
    from shared_model.model.checkpoint import save_checkpoint
    from shared_model.train.centralized import checkpoint_nbytes
    from shared_model.train.trainer import LocalTrainer

    model = build_model(tiny_model_cfg)
    trainer = LocalTrainer(model, EyeCLIPObjective(LossConfig()), TrainConfig(steps=1, batch_size=8, device="cpu"),
                           torch.device("cpu"))
    records = load_manifest(small_phantom / "site_0" / "manifest.csv").select("train")
    trainer.run(RetinaDataset(records, 64, train=True), 1, progress=False)
    save_checkpoint(model, tiny_model_cfg, tmp_path)
    trainer.save_state(tmp_path)
    written = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert checkpoint_nbytes(model) <= written <= checkpoint_nbytes(model) + 2 ** 20  # headers: inside the margin
