"""Run outputs: ``report.html`` is built from the folder's files alone, shows each section the
folder has data for and references nothing outside itself; ``metrics.jsonl`` tolerates a torn
last line only; TensorBoard mirrors the same numbers; ``retina-export`` makes a stand-alone
checkpoint and refuses damaged ones."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from shared_model.reporting.metrics_log import MetricsLog, read_metrics, scalar_leaves
from shared_model.reporting.plots import line_panels_figure
from shared_model.reporting.run_report import build_report, write_run_report
from tests.fixtures.run_folder import make_run_folder


def test_federated_report_has_every_section_and_no_outside_reference(tmp_path):
    page = write_run_report(make_run_folder(tmp_path)).read_text()
    for plot in ("loss-per-site", "aca-over-rounds", "epsilon-over-rounds", "bytes-per-round",
                 "confusion-heldout/CFP", "samples-corpus"):
        assert f'id="{plot}"' in page, plot
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert ("site_2: did not reply" in page and "evaluation skipped: only 1 site connected" in page
            and "Memorisation audit" in page and "rounds done / planned" in page)
    # Every src/href is inline data; http(s) appears only as SVG/XML namespace names.
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert refs and all(ref.startswith("data:") or ref.startswith("#") for ref in refs), refs
    assert "url(http" not in page and "@import" not in page


def test_report_before_any_round_and_without_losses(tmp_path):
    run = make_run_folder(tmp_path, rounds=0, corpus_images=0)
    assert "No round has completed yet" in build_report(run)
    dp_only = [json.loads(line)
               for line in (make_run_folder(tmp_path / "b") / "metrics.jsonl").read_text().splitlines()]
    for record in dp_only:
        for site in record["sites"].values():
            for key in [k for k in site if k.startswith("loss")]:
                del site[key]
    run_b = tmp_path / "b" / "run"
    (run_b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dp_only))
    page = build_report(run_b)
    assert "Sites sent no losses" in page and 'id="epsilon-over-rounds"' in page


def test_centralized_steps_are_plotted(tmp_path):
    (tmp_path / "config.yaml").write_text("model:\n  name: tiny\nprivacy:\n  mode: none\n")
    log = MetricsLog(tmp_path)
    for step in (10, 20):
        log.append({"step": step, "loss": 3.0 / step, "loss_mae": 1.0, "images_per_s": 50.0})
    page = build_report(tmp_path)
    assert 'id="loss-per-step"' in page and "centralized" in page


def test_metrics_log_torn_last_line_is_ignored_a_damaged_middle_line_is_named(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"round": 1, "x": 1.0})
    log.append({"round": 2, "x": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 3, "x"')  # the process died mid-write
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2"):
        read_metrics(tmp_path)


def test_tensorboard_mirrors_the_jsonl_numbers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, tensorboard=True)
    record = {"round": 2, "sites": {"site_0": {"loss.total": 1.25, "epsilon": 3.5}}, "rejected": [], "ok": True}
    log.append(record)
    log.close()
    assert scalar_leaves(record) == {"round": 2.0, "sites/site_0/loss.total": 1.25, "sites/site_0/epsilon": 3.5}
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["sites/site_0/epsilon", "sites/site_0/loss.total"]
    (point,) = events.Scalars("sites/site_0/epsilon")
    assert point.step == 2 and point.value == pytest.approx(3.5)


def test_export_checks_the_weights_and_refuses_a_full_folder(tmp_path):
    from server.model_export import export_run
    from server.round_checkpoint import ServerState, save_round
    from shared_model.config import ModelConfig
    from shared_model.model import build_model
    from shared_model.model.checkpoint import CONFIG, WEIGHTS, load_checkpoint, save_checkpoint
    from shared_model.model.state_dicts import CheckpointError

    run = make_run_folder(tmp_path)
    cfg = ModelConfig()
    site = {"mode": "dp-sgd", "epsilon": 4.5, "delta": 1e-5, "unit": "patient", "accountant": "prv"}
    privacy = {"mode": "dp-sgd", "unit": "patient", "secagg": False, "transport": "TLS",
               "central": {"mode": "none"}, "rounds": [{"round": 3, "sites": {"site_0": site, "site_1": {}}}]}

    def write(folder, server_round):
        save_checkpoint(build_model(cfg), cfg, folder, extra={"round": server_round})
        return [WEIGHTS, CONFIG]

    for k in (2, 3):
        save_round(run, write, {}, ServerState(k, strategy="fedavg", privacy=privacy))
    out = export_run(run, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors", "privacy.md"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "federated, 3 rounds of fedavg (2+ sites per round, 2 local steps)" in card
    assert "| zero-shot | heldout/CFP |" in card
    assert "- worst site: ε = 4.500 at δ = 1e-05 per patient (prv accountant, 1 sites with DP records)" in card
    assert "- secure aggregation: off; transport: TLS" in card
    load_checkpoint(out)
    with pytest.raises(FileExistsError, match="not empty"):
        export_run(run, out)
    with pytest.raises(FileNotFoundError, match="round 1 is not kept"):
        export_run(run, tmp_path / "other", round_number=1)
    damaged = run / "checkpoints" / "round_0002" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        export_run(run, tmp_path / "third", round_number=2)
    assert not (tmp_path / "third").exists()
    shutil.rmtree(run)
    assert load_checkpoint(out)[1].name == cfg.name  # the export stands alone


def test_round_axes_tick_only_at_whole_rounds():
    """Three rounds of ε: matplotlib's default locator would tick at 1.0, 1.25, 1.5, …"""
    fig = line_panels_figure({"ε spent so far": {"site_0": ([1, 2, 3], [0.5, 0.9, 1.2])}}, "round")
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks == [1, 2, 3]
