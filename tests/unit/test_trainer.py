"""The local trainer: loss goes down on phantom data, resumption is bit-exact, and a run
folder holds the checkpoint, the resolved config and metrics."""

import dataclasses

import pytest
import torch

from shared_model.config import LossConfig, TrainConfig
from shared_model.data.dataset import RetinaDataset
from shared_model.data.manifest import load_manifest
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.runtime import seed_everything
from shared_model.train import LocalTrainer
from shared_model.train.trainer import TrainStats


@pytest.fixture(scope="module")
def records(small_phantom):
    return load_manifest(small_phantom / "site_0" / "manifest.csv").select("train")


def _trainer(cfg_model, records, steps_total, seed=0, lr=1e-3):
    seed_everything(seed)
    model = build_model(cfg_model)
    cfg = TrainConfig(steps=steps_total, batch_size=8, lr=lr, warmup_steps=2, seed=seed, device="cpu")
    trainer = LocalTrainer(model, EyeCLIPObjective(LossConfig()), cfg, torch.device("cpu"))
    return trainer, RetinaDataset(records, 64, train=True, pair_modalities=True)


def test_loss_decreases_over_a_few_steps(tiny_model_cfg, records):
    trainer, ds = _trainer(tiny_model_cfg, records, 30, lr=2e-3)
    first = trainer.run(ds, 5, progress=False).losses["total"]
    trainer.run(ds, 20, progress=False)
    last = trainer.run(ds, 5, progress=False).losses["total"]
    assert last < first - 0.1, (first, last)


def test_resume_is_bit_exact(tiny_model_cfg, records, tmp_path):
    straight, ds = _trainer(tiny_model_cfg, records, 6)
    straight.run(ds, 6, progress=False)

    first, ds = _trainer(tiny_model_cfg, records, 6)
    first.run(ds, 3, progress=False)
    first.save_state(tmp_path)
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}

    resumed, ds = _trainer(tiny_model_cfg, records, 6, seed=0)
    torch.manual_seed(1234)  # a different RNG state must be overwritten by the saved one
    resumed.model.load_state_dict(weights)
    resumed.load_state(tmp_path)
    assert resumed.step == 3
    resumed.run(ds, 3, progress=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_epochs_roll_over_and_positions_advance_and_partners_ride_along(tiny_model_cfg, records):
    """Every phantom image has its other-modality partner of the same eye: each batch of 8 anchors
    carries their 8 partners through the tower; without pairing, the anchors alone."""
    trainer, ds = _trainer(tiny_model_cfg, records, 100)
    assert ds.pairing.paired == len(ds) and set(ds.pairing.by_modality) == {"CFP", "OCT"}
    per_epoch = len(ds) // 8
    stats = trainer.run(ds, per_epoch + 2, progress=False)
    assert stats.steps == per_epoch + 2 and trainer.epoch == 1 and trainer.batch_in_epoch == 2
    assert stats.anchors == stats.paired == 8 * stats.steps and stats.images == 16 * stats.steps
    alone = trainer.run(RetinaDataset(records, 64, train=True), 1, progress=False)
    assert (alone.images, alone.paired) == (8, 0)


def test_time_budget_stops_early(tiny_model_cfg, records):
    trainer, ds = _trainer(tiny_model_cfg, records, 1000)
    stats = trainer.run(ds, 1000, max_seconds=0.0, progress=False)
    assert stats.steps <= 1


def test_objective_flags_coupled_terms_for_dp(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    assert not EyeCLIPObjective(LossConfig()).per_example_decomposable(model)
    assert EyeCLIPObjective(LossConfig(image_text=0, image_image=0)).per_example_decomposable(model)
    no_mae = build_model(dataclasses.replace(tiny_model_cfg,
                                             mae=dataclasses.replace(tiny_model_cfg.mae, enabled=False)))
    assert EyeCLIPObjective(LossConfig(image_text=0, image_image=0)).active_terms(no_mae) == []


def test_an_unreadable_image_is_one_skipped_file_however_often_it_fails(tiny_model_cfg, records, tmp_path, caplog):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG cut")
    some = [*records[:7], dataclasses.replace(records[7], image=broken)]  # one batch of 8 an epoch
    trainer, _ = _trainer(tiny_model_cfg, some, 4)
    ds = RetinaDataset(some, 64, train=True)
    with caplog.at_level("WARNING", logger="shared_model.train.trainer"):
        chunks = [trainer.run(ds, 2, progress=False) for _ in range(2)]  # 2 epochs a chunk: drawn 4 times
    reason = f"{broken}: cannot decode image (UnidentifiedImageError: cannot identify image file '{broken}')"
    assert [c.skipped for c in chunks] == [[reason], [reason]]
    assert TrainStats.merge(chunks).skipped == [reason]
    assert caplog.messages == [f"unreadable image, skipped whenever it is drawn: {reason}"]
