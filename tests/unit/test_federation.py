"""A whole federated run in-process (real ClientApp code, tiny model, in-process Grid):
resume equals an uninterrupted run, checkpoints are verified, a finished run is not overwritten,
and one-site FedAvg equals local training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import Message

from server.federation import run_federation
from server.round_checkpoint import STRATEGY_FILE, latest_round, verify_round
from server.round_log import zero_shot_summary
from server.rounds import QuorumError
from shared_model.conf import compose_app
from shared_model.eval.evaluate import evaluate_model
from shared_model.file_digest import sha256_file
from shared_model.model.checkpoint import WEIGHTS, load_checkpoint
from shared_model.run_config import flatten_config
from shared_model.runtime import resolve_device
from tests.fixtures.in_process_grid import InProcessGrid, client_app_handler


def federation_cfg(phantom: Path, run_dir: Path, *extra: str):
    return compose_app("federation", [
        f"phantom.root={phantom}", "phantom.sites=2", "phantom.images_per_site=40", "phantom.heldout_images=30",
        f"run_dir={run_dir}", "federation.rounds=3", "federation.round_retries=0", "federation.connect_timeout=1",
        "federation.round_timeout=2",  # a site that is gone is waited for this long
        "train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "data.num_workers=0",
        "eval.linear_probe=false", "eval.retrieval=false", "eval.kshot=[]", *extra])


def grid_for(cfg, fail_from_round: int | None = None) -> InProcessGrid:
    flat = flatten_config(cfg)
    handlers = {}
    for index, node in enumerate((101, 202)):
        real = client_app_handler(node, {"partition-id": index, "num-partitions": 2}, flat)

        def handle(msg: Message, real=real):
            if fail_from_round is not None and int(msg.content["config"]["server-round"]) >= fail_from_round:
                return None  # the site is gone
            return real(msg)

        handlers[node] = handle
    return InProcessGrid(handlers)


def fingerprint(run_dir: Path) -> tuple:
    folder, state = latest_round(run_dir)
    return state.round, sha256_file(folder / WEIGHTS), sha256_file(folder / STRATEGY_FILE), json.dumps(state.history)


def test_resume_equals_uninterrupted_run(small_phantom, tmp_path):
    straight = federation_cfg(small_phantom, tmp_path / "straight", "strategy=fedadam")
    run_federation(grid_for(straight), straight)

    interrupted = federation_cfg(small_phantom, tmp_path / "resumed", "strategy=fedadam")
    with pytest.raises(QuorumError, match="round 3: quorum not met"):
        run_federation(grid_for(interrupted, fail_from_round=3), interrupted)
    assert latest_round(tmp_path / "resumed")[1].round == 2
    resumed = federation_cfg(small_phantom, tmp_path / "resumed", "strategy=fedadam", "resume=true")
    run_federation(grid_for(resumed), resumed)

    logged = [json.loads(line)["round"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]  # each round logged once across the interruption
    a, b = fingerprint(tmp_path / "straight"), fingerprint(tmp_path / "resumed")
    assert a[0] == b[0] == 3
    assert a == b  # weights, FedAdam moments and the metrics history, bit for bit
    last = json.loads(a[3])[-1]
    assert sorted(last["sites"]) == ["site_0", "site_1"]
    # The logged zero-shot figures are the evaluator's on the checkpointed aggregate; the federated
    # figure is the sites' own, weighted by the examples each scored.
    device = resolve_device(straight.train.device)
    model, _ = load_checkpoint(latest_round(tmp_path / "straight")[0], device)
    expected = zero_shot_summary(evaluate_model(model, straight.eval, straight.model.image.image_size, device))
    assert sorted(last["server_eval"]) == sorted(expected) == ["heldout/CFP", "heldout/OCT"]
    assert all(last["server_eval"][task] == pytest.approx(figures) for task, figures in expected.items())
    sites = last["site_eval"].values()
    assert all(m["num-examples"] > 0 for m in sites)
    assert last["federated_eval"]["zero-shot-aca"] == pytest.approx(
        sum(m["num-examples"] * m["zero-shot-aca"] for m in sites) / sum(m["num-examples"] for m in sites))

    # A truncated newest checkpoint is detected and the previous round is used instead.
    newest = tmp_path / "straight" / "checkpoints" / "round_0003" / WEIGHTS
    newest.write_bytes(newest.read_bytes()[:1000])
    folder, state = latest_round(tmp_path / "straight")
    assert state.round == 2 and folder.name == "round_0002"
    with pytest.raises(ValueError, match="SHA-256"):
        verify_round(newest.parent)

    # A run folder with checkpoints is never silently overwritten.
    with pytest.raises(ValueError, match="resume=true"):
        run_federation(grid_for(straight), straight)


def test_one_site_fedavg_equals_local_training(small_phantom, tmp_path):
    """One site, one round of FedAvg == the same local steps on that site alone."""
    from shared_model.federated.foundation import FoundationTask
    from shared_model.federated.site import Site
    from shared_model.model import build_model
    from shared_model.model.exchange import exchanged_state_dict
    from shared_model.runtime import seed_everything

    cfg = federation_cfg(small_phantom, tmp_path / "fed", "federation.rounds=1", "federation.min_sites=1",
                         "federation.min_available=1", "eval=none", "strategy.fraction_evaluate=0")
    flat = flatten_config(cfg)
    run_federation(InProcessGrid({7: client_app_handler(7, {"partition-id": 0, "num-partitions": 1}, flat)}), cfg)
    folder, _ = latest_round(tmp_path / "fed")
    from safetensors.torch import load_file
    federated = load_file(str(folder / WEIGHTS))

    seed_everything(cfg.train.seed)
    initial = exchanged_state_dict(build_model(cfg.model))
    site = Site("site_0", [str(small_phantom / "site_0" / "manifest.csv")], tmp_path / "alone", cfg.train.device)
    local = FoundationTask().train_site(cfg, site, initial, 1, {}).state
    for name, tensor in local.items():
        assert torch.equal(tensor, federated[name]), name


def test_a_federated_site_trains_its_oct_volumes_through_the_adapter(small_phantom, tmp_path):
    """A simulated site reads its images and its volumes (two manifests), pairs them, trains the
    slice adapter, and the coordinator scores the held-out volumes through the aggregate."""
    from safetensors.torch import load_file

    from shared_model.model import build_model
    from shared_model.model.checkpoint import load_checkpoint
    from shared_model.model.exchange import exchanged_state_dict
    from shared_model.runtime import seed_everything

    cfg = federation_cfg(small_phantom, tmp_path / "fed", "federation.rounds=1", "federation.min_sites=1",
                         "federation.min_available=1", "strategy.fraction_evaluate=0", "data=phantom_volumes",
                         "eval=phantom_volumes", "model.volume_max_slices=16", "data.volume_slices=4")
    flat = flatten_config(cfg)
    history = run_federation(InProcessGrid({7: client_app_handler(7, {"partition-id": 0, "num-partitions": 1}, flat)}),
                             cfg).history
    site = history[-1]["sites"]["site_0"]
    assert site["paired-anchors"] > 0 and "loss.image_image" in site
    assert history[-1]["server_eval"]["volumes/OCT"]["aca"] is not None
    seed_everything(cfg.train.seed)
    initial = exchanged_state_dict(build_model(cfg.model))
    folder, _ = latest_round(tmp_path / "fed")
    trained = load_file(str(folder / WEIGHTS))
    assert not torch.equal(trained["volume_pool.positions.weight"], initial["volume_pool.positions.weight"])
    model, model_cfg = load_checkpoint(folder)  # the round's checkpoint rebuilds the adapter
    assert model_cfg.volume_max_slices == 16 and torch.equal(model.volume_pool.positions.weight,
                                                             trained["volume_pool.positions.weight"])


class CoordinatorDied(Exception):
    pass


def test_a_round_is_checkpointed_before_its_federated_evaluation(small_phantom, tmp_path):
    """The coordinator dies while the sites score round 1: the round is kept (checkpoint, and on
    resume its metrics.jsonl line, untimed), and the resumed run logs every round once."""
    cfg = federation_cfg(small_phantom, tmp_path / "run", "federation.rounds=2")
    grid = grid_for(cfg)
    for node, real in list(grid.handlers.items()):
        def die_on_evaluate(msg: Message, real=real):
            if msg.metadata.message_type == "evaluate":
                raise CoordinatorDied()
            return real(msg)

        grid.handlers[node] = die_on_evaluate
    with pytest.raises(CoordinatorDied):
        run_federation(grid, cfg)
    assert latest_round(tmp_path / "run")[1].round == 1
    resumed = federation_cfg(small_phantom, tmp_path / "run", "federation.rounds=2", "resume=true")
    run_federation(grid_for(resumed), resumed)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert records[0]["seconds"] is None and records[0]["server_eval"] and records[1]["federated_eval"]


def test_a_second_run_on_a_live_run_folder_writes_nothing(small_phantom, tmp_path):
    from server.run_lock import RunFolderBusy, RunLock

    cfg = federation_cfg(small_phantom, tmp_path / "run", "federation.rounds=1")
    with RunLock(tmp_path / "run", 1):
        with pytest.raises(RunFolderBusy, match="being written by run 1"):
            run_federation(grid_for(cfg), cfg, run_id=2)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.lock"]
