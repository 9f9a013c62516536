"""``retina-sim`` end to end on Flower's simulation engine (local SuperLink + Ray), as a
researcher runs it: 3 phantom sites x 2 rounds, tiny model, CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from server.flower_runtime import is_running, local_superlink_pids
from shared_model.conf import compose_app
from shared_model.model import build_model
from shared_model.model.exchange import exchanged_state_dict
from shared_model.runtime import seed_everything
from tests.fixtures import processes

BIN = Path(sys.executable).parent
SMALL = ["phantom.sites=3", "phantom.images_per_site=16", "phantom.heldout_images=22", "phantom.seed=5",
         "train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "data.num_workers=0",
         "eval.linear_probe=false", "eval.retrieval=false", "eval.kshot=[]", "federation.rounds=2",
         "federation.round_timeout=300"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return processes.run(args, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_three_sites_two_rounds(tmp_path):
    run = tmp_path / "sim"
    result = _run([str(BIN / "retina-sim"), f"phantom.root={tmp_path / 'phantom'}", f"run_dir={run}", *SMALL])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert sorted(record["sites"]) == ["site_0", "site_1", "site_2"]
        assert all(m["steps"] == 2 and m["loss.total"] > 0 for m in record["sites"].values())
        assert sorted(record["server_eval"]) == ["heldout/CFP", "heldout/OCT"]
        assert record["bytes_sent"] > 0 and record["bytes_received"] > 0
    # The last round's logged figures are those of the final evaluation report (two rounds of two
    # steps stay at chance: the figures themselves say nothing of learning).
    final_eval = json.loads((run / "eval" / "metrics.json").read_text())["zero_shot"]
    assert records[-1]["server_eval"] == {task: {"aca": m["aca"], "auc": m["auc"]} for task, m in final_eval.items()}
    assert "federated rounds" in result.stdout and "heldout/CFP" in result.stdout
    console = (result.stdout + result.stderr).replace(str(tmp_path), "RUN").splitlines()  # the user's paths aside
    assert not [line for line in console if "HTTP Request" in line]  # httpx & co. stay at WARNING
    assert max(len(line) for line in console) <= 100, max(console, key=len)
    report = (run / "report.html").read_text()
    assert all(f'id="{plot}"' in report for plot in ("loss-per-site", "aca-over-rounds", "bytes-per-round"))

    final = load_file(str(run / "checkpoints" / "round_0002" / "model.safetensors"))
    seed_everything(0)
    initial = exchanged_state_dict(build_model(compose_app("federation", []).model))
    changed = [name for name, t in initial.items() if not torch.equal(t, final[name])]
    assert len(changed) > len(initial) // 2  # the aggregate moved away from the initial weights
    for name in ("config.yaml", "flower.log", "retinafl-app/pyproject.toml", "eval/summary.md"):
        assert (run / name).is_file(), name
    assert (run / "sites" / "site_2" / "trainer" / "round_0002" / "trainer_state.pt").is_file()
    assert local_superlink_pids(run / "flwr-home") == []  # the local SuperLink was stopped


def test_secure_aggregation_with_dp_sgd_sites(tmp_path):
    """SecAgg+ (four message exchanges a round, the sites' mod keeping state in its Context) with
    DP-SGD sites, through Flower's simulation engine."""
    run = tmp_path / "sim"
    result = _run([str(BIN / "retina-sim"), f"phantom.root={tmp_path / 'phantom'}", f"run_dir={run}", *SMALL,
                   "secagg=on", "privacy=dp_sgd", "privacy.noise_multiplier=1.0", "eval=none",
                   "strategy.fraction_evaluate=0"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert sorted(record["sites"]) == ["site_0", "site_1", "site_2"]
        assert all(m["epsilon"] > 0 and not any(k.startswith("loss.") for k in m) for m in record["sites"].values())
    report = (run / "privacy.md").read_text()
    assert "## Secure aggregation per round" in report and "| 2 | 3 | 0 / 0 / 0 / 0 |" in report
    assert "| 2 | site_1 | dp-sgd | patient |" in report


def test_missing_site_manifest_is_a_clear_error(tmp_path):
    result = _run([str(BIN / "retina-sim"), f"run_dir={tmp_path / 'sim'}", "phantom.ensure=false",
                   f"federation.site_manifests=[{tmp_path}/nowhere/site.csv]"])
    assert result.returncode == 2
    assert "nowhere/site.csv" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_stops_every_process_and_nothing_is_written_after_it(tmp_path):
    """Ctrl-C at round 1 of 4: the local SuperLink, flwr-simulation and Ray (gcs_server, raylet,
    the site actors) all end, no later round appears, and the command says where the folder
    stands and how to continue it."""
    from server.flower_runtime import process_tree

    run = tmp_path / "sim"
    sim = subprocess.Popen([str(BIN / "retina-sim"), f"phantom.root={tmp_path / 'phantom'}", f"run_dir={run}", *SMALL,
                            "federation.rounds=4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    try:
        deadline = time.monotonic() + processes.time_left()
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
            assert time.monotonic() < deadline and sim.poll() is None, "round 1 never completed"
            time.sleep(0.5)
        tree = process_tree(local_superlink_pids(run / "flwr-home"))
        names = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid in tree
                         if Path(f"/proc/{pid}/cmdline").exists())
        assert "flwr-simulation" in names and "raylet" in names and "gcs_server" in names
        os.killpg(sim.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
        output, _ = processes.communicate(sim, 120)
    finally:
        if sim.poll() is None:
            os.killpg(sim.pid, signal.SIGKILL)
    assert sim.returncode == 130, output[-3000:]
    assert "stopped" in output and "Continue with:" in output and "resume=true" in output, output[-3000:]
    assert not [pid for pid in tree if is_running(pid)]
    rounds = (run / "metrics.jsonl").read_text().splitlines()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    time.sleep(3)
    assert (run / "metrics.jsonl").read_text().splitlines() == rounds and len(rounds) < 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints
