"""Deployment on loopback with real processes, as a coordinator and three hospitals run it, in
the default mode — TLS with the federation's CA and registered site keys (``retina-server pki``),
the commands started through the container images' entrypoints (``deploy/entrypoints``) with
the environment the compose file gives them, or as an operator types them:

- a run with ``min_available`` = all three sites, one killed mid-round: the round is kept, its
  evaluation skipped, the run stops within its deadlines; ``status``, the report, an export;
- a run folder owned by one run: detach, a second run refused, ``retina-server stop``, resume
  with every round once; a site that claims another site's name is not aggregated, and
  an unregistered key and a site holding another federation's CA are refused.

Every process is started here and stopped, with everything under it, by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.flower_runtime import free_port, process_state, stop_process_tree
from shared_model.data.phantom import PhantomSpec, generate_phantom
from tests.fixtures.processes import communicate, run, time_left

BIN = Path(sys.executable).parent
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COORDINATOR = str(DEPLOY / "entrypoints" / "coordinator.sh")
SITE = str(DEPLOY / "entrypoints" / "site.sh")
# rich wraps at 80 columns otherwise; the entrypoints find the console scripts on PATH, as in the images.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
TINY_RUN = ["train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "data.num_workers=0",
            "eval.linear_probe=false", "eval.retrieval=false", "eval.kshot=[]"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy") / "phantom"
    generate_phantom(PhantomSpec(n_sites=3, images_per_site=16, heldout_images=22, image_size=64, seed=9), root,
                     progress=False)
    return root


def _start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    # Own process group: killing a site's group takes its SuperNode and ClientApp down together.
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**ENV, **env},
                            start_new_session=True)


def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + time_left(timeout)
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.5)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    command = args[0] if args[0].endswith(".sh") else str(BIN / args[0])
    return run([command, *args[1:]], 300, env={**ENV, **env})


def _make_pki(folder: Path) -> Path:
    made = _cli(COORDINATOR, "pki-init", "localhost", "127.0.0.1", RETINA_PKI=str(folder))
    assert made.returncode == 0, made.stderr
    return folder


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return _make_pki(tmp_path_factory.mktemp("pki"))


def _superlink(pki: Path, state: Path, port: int, log: Path) -> subprocess.Popen:
    proc = _start([COORDINATOR, "superlink"], log, RETINA_PKI=str(pki), RETINA_STATE=str(state),
                  RETINA_HOST="127.0.0.1", RETINA_PORT=str(port))
    _wait_for_text(log, "Uvicorn running on", timeout=60)
    return proc


def _add_site(pki: Path, name: str, superlink: str | None) -> Path:
    """The site's bundle (``site.key``, ``ca.crt``), registered with the SuperLink when one is given."""
    if superlink:
        made = _cli(COORDINATOR, "add-site", name, RETINA_PKI=str(pki), RETINA_SUPERLINK=superlink)
    else:
        made = _cli("retina-server", "pki", "add-site", name, "--dir", str(pki))
    assert made.returncode == 0, made.stderr + made.stdout
    return pki / "sites" / name


def _join(phantom: Path, k: int, superlink: str, name: str, keys: Path, state: Path, log: Path) -> subprocess.Popen:
    return _start([SITE, "join"], log, RETINA_KEYS=str(keys), RETINA_STATE=str(state), RETINA_SITE=name,
                  RETINA_MANIFEST=str(phantom / f"site_{k}" / "manifest.csv"), RETINA_SUPERLINK=superlink,
                  RETINA_CLIENTAPP_PORT=str(free_port()), RETINA_DEVICE="cpu")


def _online(status: str) -> int:
    """Sites whose status cell reads 'online' in ``retina-server status`` (the header says 'online since')."""
    return sum("│ online" in line for line in status.splitlines())


def _wait_for_sites(superlink: str, run_dir: Path, n: int, pki: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + time_left(timeout)
    while True:
        status = _cli(COORDINATOR, "status", "--run-dir", str(run_dir), RETINA_PKI=str(pki), RETINA_SUPERLINK=superlink)
        if _online(status.stdout) >= n or time.monotonic() > deadline:
            return status.stdout
        time.sleep(2)


def test_three_sites_min_available_all_one_killed_mid_round_stops_within_its_deadlines(phantom, pki, tmp_path):
    """min_available=3 and hospital-2 dies in round 1: the round aggregates the two others
    (min_sites=2) and is checkpointed, its federated evaluation is skipped once no third site is
    connected within connect_timeout, round 2 cannot gather three sites and the run stops with
    the reason and the resume command — all within the configured deadlines (Flower's own node
    sampling would wait forever). The one-round folder has its report, export and status."""
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    run_dir = tmp_path / "runs" / "run"
    processes = [_superlink(pki, tmp_path / "link", port, tmp_path / "superlink.log")]
    try:
        for k in range(3):
            keys = _add_site(pki, f"hospital-{k}", superlink)
            processes.append(_join(phantom, k, superlink, f"hospital-{k}", keys, tmp_path / f"site{k}",
                                   tmp_path / f"site{k}.log"))
        assert _online(_wait_for_sites(superlink, run_dir, 3, pki)) == 3
        connect, round_timeout = 10, 150
        start = time.monotonic()
        coordinator = subprocess.Popen(
            [COORDINATOR, "run", f"phantom.root={phantom}", "phantom.sites=3", "phantom.images_per_site=16",
             "phantom.heldout_images=22", "phantom.seed=9", "federation.rounds=2", "federation.min_sites=2",
             "federation.min_available=3", f"federation.connect_timeout={connect}", "federation.round_retries=0",
             f"federation.round_timeout={round_timeout}", "strategy.fraction_evaluate=1", *TINY_RUN],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**ENV, "RETINA_PKI": str(pki), "RETINA_SUPERLINK": superlink, "RETINA_RUNS": str(tmp_path / "runs"),
                 "RETINA_RUN_NAME": "run", "RETINA_CONFIG_DIR": str(DEPLOY / "config" / "coordinator")})
        _wait_for_text(tmp_path / "site2.log", "Receiving: train message", timeout=300)
        os.killpg(processes[3].pid, signal.SIGKILL)  # hospital-2 dies in the middle of round 1
        output, _ = communicate(coordinator)
        took = time.monotonic() - start
        assert coordinator.returncode == 2, output[-5000:]
        assert "only 2 of the 3 sites needed were connected" in output and "Continue with:" in output, output[-5000:]
        # round 1 waits for replies (a dead site's message fails once its heartbeat lapses), its
        # evaluation and round 2 for sites: nothing waits longer
        assert took < round_timeout + 2 * connect + 180, took
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [1]
        assert sorted(records[0]["sites"]) == ["hospital-0", "hospital-1"]
        assert any("hospital-2" in reason for reason in records[0]["rejected"]), records[0]["rejected"]
        assert records[0]["evaluation_skipped"].startswith("federated evaluation skipped: only 2 sites connected")
        assert (run_dir / "checkpoints" / "round_0001" / "model.safetensors").is_file()
        # The site's data path stays at the site: it is in no file the coordinator wrote.
        for path in run_dir.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml", ".toml", ".log", ".html", ".md"):
                assert str(phantom / "site_0") not in path.read_text(errors="replace"), path
        report = (run_dir / "report.html").read_text()
        assert 'id="aca-over-rounds"' in report and 'id="bytes-per-round"' in report and "hospital-1" in report
        exported = _cli(COORDINATOR, "export", str(run_dir), "--out", str(tmp_path / "model"))
        assert exported.returncode == 0, exported.stderr
        assert "federated, 1 round of fedavg" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
        status = _wait_for_sites(superlink, run_dir, 2, pki)
        assert "finished:failed" in status and "round 1 complete" in status
        assert (tmp_path / "site0" / "trainer" / "round_0001" / "trainer_state.pt").is_file()
        privacy = (run_dir / "privacy.md").read_text()
        assert "| Transport | TLS |" in privacy and "| 1 | hospital-0 | none |" in privacy
    finally:
        _stop_all(processes)
    survivors = {proc.pid: (proc.args[:2], process_state(proc.pid)) for proc in processes if proc.poll() is None}
    assert not survivors, survivors


def test_site_check_reports_readiness_and_refuses_bad_data(phantom, tmp_path):
    ok = run([str(BIN / "retina-client"), "check", "--manifest", str(phantom / "site_0" / "manifest.csv"),
              "--device", "cpu"], 300, env=ENV)
    assert ok.returncode == 0 and "ready to join" in ok.stdout and "CFP" in ok.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("image,patient_id,eye,modality,labels,report,split\nmissing.png,p1,OD,CFP,normal,,train\n")
    refused = run([str(BIN / "retina-client"), "--manifest", str(bad), "--server", "127.0.0.1:1", "--insecure"], 300,
                  env=ENV)
    assert refused.returncode == 2 and "missing.png" in refused.stderr and "Traceback" not in refused.stderr
    assert "warning: --insecure" in refused.stderr


def _exit_code(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=time_left(timeout))
    except subprocess.TimeoutExpired:
        return None


def _rounds(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["round"] for line in path.read_text().splitlines()] if path.is_file() else []


def _launched_run(run_dir: Path) -> int:
    """The run id the folder's launch.lock names."""
    return json.loads((run_dir / "launch.lock").read_text())["run_id"]


def _wait_for_rounds(run_dir: Path, n: int, timeout: float = 300) -> None:
    wait = time_left(timeout)
    deadline = time.monotonic() + wait
    while len(_rounds(run_dir)) < n:
        assert time.monotonic() < deadline, f"{run_dir}: fewer than {n} rounds after {wait:.0f} s"
        time.sleep(0.5)


def _stop_all(processes: list[subprocess.Popen]) -> None:
    """Sites first (so they unregister from the SuperLink), then the SuperLink, each with every
    process under it (a ServerApp runs in a process group of its own)."""
    for proc in reversed(processes):
        stop_process_tree([proc.pid])


def test_a_run_owns_its_folder_detaches_stops_resumes_and_only_registered_names_count(phantom, pki, tmp_path):
    """Site identity: a key never registered and a site holding another federation's CA are
    refused, each with one line naming the cause; two registered sites join, one of them claiming
    the other's name. A detached run keeps going and keeps its folder (a second run is refused)
    until `retina-server stop`; the resume finishes with every round logged once, and the
    impostor's updates were never aggregated. (Ctrl-C without --detach, which stops the run
    instead: tests/unit/test_launch.py and the retina-sim Ctrl-C test.)"""
    for name in ("ca.key", "server.key"):
        assert (pki / name).stat().st_mode & 0o777 == 0o600
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    run_dir = tmp_path / "runs" / "run"
    ca = str(pki / "ca.crt")
    processes = [_superlink(pki, tmp_path / "link", port, tmp_path / "superlink.log")]
    server = [str(BIN / "retina-server")]
    launch = [*server, "run", "--superlink", superlink, "--root-certificates", ca]
    config = [f"run_dir={run_dir}", f"phantom.root={phantom}", "phantom.sites=3", "phantom.images_per_site=16",
              "phantom.heldout_images=22", "phantom.seed=9", "federation.rounds=2", "federation.min_sites=1",
              "federation.min_available=2", "federation.round_timeout=150", "strategy.fraction_evaluate=0", "eval=none",
              *TINY_RUN]

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=ENV)

    try:
        for k, (name, claims) in enumerate((("site-a", "site-a"), ("site-b", "site-a"))):
            keys = _add_site(pki, name, superlink)
            assert (keys / "site.key").stat().st_mode & 0o777 == 0o600
            assert (keys / "ca.crt").read_bytes() == (pki / "ca.crt").read_bytes()
            processes.append(_join(phantom, k, superlink, claims, keys, tmp_path / f"s{k}", tmp_path / f"s{k}.log"))
        status = _wait_for_sites(superlink, run_dir, 2, pki)
        assert _online(status) == 2 and all(f"│ {n}" in status for n in ("site-a", "site-b")), status
        stranger = _add_site(pki, "stranger", None)  # keys made, never registered
        wrong_ca = _add_site(pki, "wrong-ca", superlink)
        # This site was handed another federation's CA: it cannot trust our SuperLink.
        (wrong_ca / "ca.crt").write_bytes((_make_pki(tmp_path / "other-pki") / "ca.crt").read_bytes())
        refused = [_join(phantom, 2, superlink, name, keys, tmp_path / name, tmp_path / f"{name}.log")
                   for name, keys in (("stranger", stranger), ("wrong-ca", wrong_ca))]
        processes += refused

        detached = start(*launch, "--detach", *config)
        assert [_exit_code(proc, 90) for proc in refused] == [2, 2]
        stranger_log, wrong_ca_log = ((tmp_path / f"{name}.log").read_text() for name in ("stranger", "wrong-ca"))
        assert "Failed to activate SuperNode" in stranger_log and "error: the SuperLink refused this site's key" \
            in stranger_log
        assert "CERTIFICATE_VERIFY_FAILED" in wrong_ca_log and "not signed by the CA given" in wrong_ca_log
        _wait_for_rounds(run_dir, 1)
        detached.send_signal(signal.SIGTERM)
        output, _ = communicate(detached, 60)
        assert detached.returncode == 0 and "detached: run" in output, output[-3000:]

        second = run([*launch, *config], 120, env=ENV)
        assert second.returncode == 2 and "a second run on this folder is refused" in second.stderr, second.stderr
        assert "retina-server stop --run-dir" in second.stderr

        stopped = run([*server, "stop", "--run-dir", str(run_dir)], 300, env=ENV)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        done = len(_rounds(run_dir))
        assert _rounds(run_dir) == list(range(1, done + 1))
        # Stopped during round 2 (it takes far longer than the refusal and the stop); a machine fast
        # enough to finish round 2 first sees the run reported as ended instead.
        assert ("run %s stopped" if done == 1 else "run %s had already ended") % _launched_run(run_dir) \
            in stopped.stdout, stopped.stdout
        assert f"Continue with:\n  retina-server run --superlink {superlink}" in stopped.stdout

        finished = run([*launch, "--resume", str(run_dir)], env=ENV)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [1, 2]  # every round once across the commands
        assert all(sorted(r["sites"]) == ["site-a"] for r in records)
        impostor = "claims to be site 'site-a' but its key is registered as 'site-b' (rejected)"
        assert all(any(impostor in reason for reason in r["rejected"]) for r in records)
        runs = _cli("retina-server", "status", "--superlink", superlink, "--root-certificates", ca).stdout
        assert "running" not in runs and runs.count("finished:stopped") == (done == 1), runs
        assert _online(runs) == 2  # the refused sites never came online
        for log in tmp_path.glob("*.log"):  # no private key material in any log
            assert "PRIVATE KEY" not in log.read_text(errors="replace")
    finally:
        _stop_all(processes)
