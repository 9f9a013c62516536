"""Privacy in a whole federated run (real ClientApp code, tiny model, in-process Grid): DP-SGD
sites account ε per round in their ledgers and in privacy.md, stop at their budget, refuse to
train without their ledger; a site with another model schema is refused and never aggregated;
client-level DP reports ε per round."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from server.federation import run_federation
from server.rounds import QuorumError
from shared_model.privacy.ledger import LEDGER_FILE, PrivacyLedger
from shared_model.run_config import flatten_config
from tests.fixtures.in_process_grid import InProcessGrid, client_app_handler
from tests.unit.test_federation import federation_cfg

DP = ("privacy=dp_sgd", "privacy.noise_multiplier=1.0", "federation.rounds=2", "eval=none",
      "strategy.fraction_evaluate=0")


def _grid(cfg, site_cfgs=None) -> InProcessGrid:
    handlers = {}
    for index, node in enumerate((101, 202)):
        site_cfg = (site_cfgs or {}).get(index, cfg)
        handlers[node] = client_app_handler(node, {"partition-id": index, "num-partitions": 2},
                                            flatten_config(site_cfg))
    return InProcessGrid(handlers)


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dp_sgd_run_accounts_each_site_and_stops_at_the_budget(small_phantom, tmp_path):
    cfg = federation_cfg(small_phantom, tmp_path / "dp", *DP)
    state = run_federation(_grid(cfg), cfg)
    first, second = (r["sites"] for r in state.privacy["rounds"])
    for site in ("site_0", "site_1"):
        assert first[site]["mode"] == "dp-sgd" and first[site]["unit"] == "patient"
        assert 0 < first[site]["epsilon"] < second[site]["epsilon"]
        ledger = PrivacyLedger.load(tmp_path / "dp" / "sites" / site / LEDGER_FILE)
        assert ledger.total_steps == 2 * cfg.train.steps and ledger.spent() == second[site]["epsilon"]
        assert _history(tmp_path / "dp")[1]["sites"][site]["epsilon"] == second[site]["epsilon"]
    report = (tmp_path / "dp" / "privacy.md").read_text()
    assert "| 2 | site_0 | dp-sgd | patient | 1 | 1 |" in report and "not a CSPRNG" in report
    assert "image-level ε says nothing about a patient" in report
    assert "image_norm: BatchNorm1d" in report and "GroupNorm" in report and "temperature.log_scale" in report

    # Budget between the ε of one and of two rounds: round 1 trains, round 2 every site stops.
    budget = (first["site_0"]["epsilon"] + second["site_0"]["epsilon"]) / 2
    capped = federation_cfg(small_phantom, tmp_path / "capped", *DP, f"privacy.epsilon_budget={budget}")
    with pytest.raises(QuorumError, match="privacy budget"):
        run_federation(_grid(capped), capped)
    assert [r["round"] for r in _history(tmp_path / "capped")] == [1]
    kept = PrivacyLedger.load(tmp_path / "capped" / "sites" / "site_0" / LEDGER_FILE)
    assert kept.total_steps == cfg.train.steps and kept.spent() <= budget


def test_site_without_its_ledger_refuses_to_train(small_phantom, tmp_path):
    cfg = federation_cfg(small_phantom, tmp_path / "dp", *DP, "federation.rounds=1")
    run_federation(_grid(cfg), cfg)
    (tmp_path / "dp" / "sites" / "site_0" / LEDGER_FILE).unlink()
    resumed = federation_cfg(small_phantom, tmp_path / "dp", *DP, "federation.rounds=2", "resume=true",
                             "federation.min_sites=1", "federation.min_available=1")
    run_federation(_grid(resumed), resumed)
    last = _history(tmp_path / "dp")[-1]
    assert sorted(last["sites"]) == ["site_1"]
    assert any("site_0" in r or "node-101" in r for r in last["rejected"])
    assert any("restart the privacy accounting" in r for r in last["rejected"])
    assert not (tmp_path / "dp" / "sites" / "site_0" / LEDGER_FILE).exists()  # nothing was trained or written


def test_site_with_another_model_schema_is_refused_and_never_aggregated(small_phantom, tmp_path):
    cfg = federation_cfg(small_phantom, tmp_path / "run", "federation.rounds=1", "federation.min_sites=1",
                         "federation.min_available=1", "eval=none", "strategy.fraction_evaluate=0")
    other = replace(cfg, model=replace(cfg.model, embed_dim=cfg.model.embed_dim // 2))
    state = run_federation(_grid(cfg, {1: other}), cfg)
    record = state.history[0]
    assert sorted(record["sites"]) == ["site_0"]
    assert any("cannot take part" in r and "model schema" in r for r in record["rejected"])


def test_client_level_dp_reports_epsilon_per_round(small_phantom, tmp_path):
    cfg = federation_cfg(small_phantom, tmp_path / "central", "privacy.central=fixed", "privacy.central_clip=0.5",
                         "federation.rounds=2", "eval=none", "strategy.fraction_evaluate=0")
    state = run_federation(_grid(cfg), cfg)
    epsilons = [r["central_epsilon"] for r in state.privacy["rounds"]]
    assert 0 < epsilons[0] < epsilons[1] and state.privacy["central"]["epsilon"] == epsilons[1]
    report = (tmp_path / "central" / "privacy.md").read_text()
    assert "## Client-level DP per round" in report and f"| 2 | 2 | {epsilons[1]:.4g} |" in report
