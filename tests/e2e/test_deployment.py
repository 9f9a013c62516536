"""Deployment on loopback with real processes, as a coordinator and three hospitals run it, in
the default mode — TLS with the federation's CA and registered site keys (``retina-server pki``),
every command started through the container images' entrypoints (``deploy/entrypoints``) with
the environment the compose file gives them: the SuperLink, three site SuperNodes, a run of 2
rounds during which one site is killed mid-round, ``status``, the run's report and an exported
model; and site identity: an unregistered key and a site holding another federation's CA are
refused. Every process is started here and stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.flower_runtime import free_port, stop_process_tree
from shared_model.data.phantom import PhantomSpec, generate_phantom

BIN = Path(sys.executable).parent
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COORDINATOR = str(DEPLOY / "entrypoints" / "coordinator.sh")
SITE = str(DEPLOY / "entrypoints" / "site.sh")
# rich wraps at 80 columns otherwise; the entrypoints find the console scripts on PATH, as in the images.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


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
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.5)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    command = args[0] if args[0].endswith(".sh") else str(BIN / args[0])
    return subprocess.run([command, *args[1:]], capture_output=True, text=True, env={**ENV, **env}, timeout=300)


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
    deadline = time.monotonic() + timeout
    while True:
        status = _cli(COORDINATOR, "status", "--run-dir", str(run_dir), RETINA_PKI=str(pki), RETINA_SUPERLINK=superlink)
        if _online(status.stdout) >= n or time.monotonic() > deadline:
            return status.stdout
        time.sleep(2)


def test_three_sites_two_rounds_one_killed_mid_round(phantom, pki, tmp_path):
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
        coordinator = subprocess.Popen(
            [COORDINATOR, "run", f"phantom.root={phantom}", "phantom.sites=3", "phantom.images_per_site=16",
             "phantom.heldout_images=22", "phantom.seed=9", "federation.rounds=2", "federation.min_sites=2",
             "federation.min_available=2", "federation.round_timeout=150", "train.steps=2", "train.batch_size=8",
             "train.warmup_steps=1", "data.num_workers=0", "strategy.fraction_evaluate=0",
             "eval.linear_probe=false", "eval.retrieval=false", "eval.kshot=[]"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**ENV, "RETINA_PKI": str(pki), "RETINA_SUPERLINK": superlink, "RETINA_RUNS": str(tmp_path / "runs"),
                 "RETINA_RUN_NAME": "run", "RETINA_CONFIG_DIR": str(DEPLOY / "config" / "coordinator")})
        _wait_for_text(tmp_path / "site2.log", "Receiving: train message", timeout=300)
        os.killpg(processes[3].pid, signal.SIGKILL)  # hospital-2 dies in the middle of round 1
        output, _ = coordinator.communicate(timeout=900)
        assert coordinator.returncode == 0, output[-5000:]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [1, 2]
        assert all(sorted(r["sites"]) == ["hospital-0", "hospital-1"] for r in records)
        assert any("did not reply" in reason or "error reply" in reason for reason in records[0]["rejected"])
        assert (run_dir / "checkpoints" / "round_0002" / "model.safetensors").is_file()
        # The site's data path stays at the site: it is in no file the coordinator wrote.
        for path in run_dir.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml", ".toml", ".log", ".html", ".md"):
                assert str(phantom / "site_0") not in path.read_text(errors="replace"), path
        report = (run_dir / "report.html").read_text()
        assert 'id="aca-over-rounds"' in report and 'id="bytes-per-round"' in report and "hospital-1" in report
        exported = _cli(COORDINATOR, "export", str(run_dir), "--out", str(tmp_path / "model"))
        assert exported.returncode == 0, exported.stderr
        assert "federated, 2 rounds of fedavg" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
        status = _wait_for_sites(superlink, run_dir, 2, pki)
        assert "finished:completed" in status and "round 2 complete" in status
        assert (tmp_path / "site0" / "trainer" / "round_0002" / "trainer_state.pt").is_file()
        privacy = (run_dir / "privacy.md").read_text()
        assert "| Transport | TLS |" in privacy and "| 2 | hospital-0 | none |" in privacy
    finally:
        _stop_all(processes)
    assert all(proc.poll() is not None for proc in processes)


def test_site_check_reports_readiness_and_refuses_bad_data(phantom, tmp_path):
    ok = subprocess.run([str(BIN / "retina-client"), "check", "--manifest", str(phantom / "site_0" / "manifest.csv"),
                         "--device", "cpu"], capture_output=True, text=True, env=ENV, timeout=300)
    assert ok.returncode == 0 and "ready to join" in ok.stdout and "CFP" in ok.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("image,patient_id,eye,modality,labels,report,split\nmissing.png,p1,OD,CFP,normal,,train\n")
    refused = subprocess.run([str(BIN / "retina-client"), "--manifest", str(bad), "--server", "127.0.0.1:1",
                              "--insecure"], capture_output=True, text=True, env=ENV, timeout=300)
    assert refused.returncode == 2 and "missing.png" in refused.stderr and "Traceback" not in refused.stderr
    assert "warning: --insecure" in refused.stderr


def _exit_code(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_site_identity_registered_key_joins_others_are_refused(phantom, pki, tmp_path):
    for name in ("ca.key", "server.key"):
        assert (pki / name).stat().st_mode & 0o777 == 0o600
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    processes = [_superlink(pki, tmp_path / "link", port, tmp_path / "superlink.log")]
    try:
        valid = _add_site(pki, "registered", superlink)
        stranger = _add_site(pki, "stranger", None)  # keys made, never registered
        wrong_ca = _add_site(pki, "wrong-ca", superlink)
        # This site was handed another federation's CA: it cannot trust our SuperLink.
        other = _make_pki(tmp_path / "other-pki")
        (wrong_ca / "ca.crt").write_bytes((other / "ca.crt").read_bytes())
        assert (valid / "site.key").stat().st_mode & 0o777 == 0o600
        assert (valid / "ca.crt").read_bytes() == (pki / "ca.crt").read_bytes()
        processes.append(_join(phantom, 0, superlink, "registered", valid, tmp_path / "a", tmp_path / "a.log"))
        assert _online(_wait_for_sites(superlink, tmp_path / "run", 1, pki)) == 1
        processes.append(_join(phantom, 1, superlink, "stranger", stranger, tmp_path / "b", tmp_path / "b.log"))
        processes.append(_join(phantom, 2, superlink, "wrong-ca", wrong_ca, tmp_path / "c", tmp_path / "c.log"))
        assert _exit_code(processes[2], 90) not in (None, 0)
        assert "Failed to activate SuperNode" in (tmp_path / "b.log").read_text()
        assert _exit_code(processes[3], 90) not in (None, 0)
        assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "c.log").read_text()
        assert processes[1].poll() is None  # the registered site is still connected
        listed = _cli("retina-server", "status", "--superlink", superlink, "--root-certificates", str(pki / "ca.crt"))
        assert _online(listed.stdout) == 1
        for log in tmp_path.glob("*.log"):  # no private key material in any log
            assert "PRIVATE KEY" not in log.read_text(errors="replace")
    finally:
        _stop_all(processes)


TINY_RUN = ["train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "data.num_workers=0",
            "eval.linear_probe=false", "eval.retrieval=false", "eval.kshot=[]"]


def _rounds(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["round"] for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_for_rounds(run_dir: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_rounds(run_dir)) < n:
        assert time.monotonic() < deadline, f"{run_dir}: fewer than {n} rounds after {timeout:.0f} s"
        time.sleep(0.5)


def _ctrl_c_enabled() -> None:
    """In the child before exec: take SIGINT as a terminal's Ctrl-C would arrive, even when this
    test runs where SIGINT is ignored (a background job), which the child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_all(processes: list[subprocess.Popen]) -> None:
    """Sites first (so they unregister from the SuperLink), then the SuperLink, each with every
    process under it (a ServerApp runs in a process group of its own)."""
    for proc in reversed(processes):
        stop_process_tree([proc.pid])


def test_a_run_owns_its_folder_detaches_stops_resumes_and_sites_cannot_borrow_names(phantom, pki, tmp_path):
    """Three registered sites, one of which claims another's name. A detached run keeps going and
    keeps its folder (a second run is refused) until `retina-server stop`; a resumed run stopped
    by Ctrl-C stops on the SuperLink too; the last resume finishes with every round logged once,
    and the impostor's updates were never aggregated."""
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    run_dir = tmp_path / "runs" / "run"
    ca = str(pki / "ca.crt")
    processes = [_superlink(pki, tmp_path / "link", port, tmp_path / "superlink.log")]
    server = [str(BIN / "retina-server")]
    launch = [*server, "run", "--superlink", superlink, "--root-certificates", ca]
    config = [f"run_dir={run_dir}", f"phantom.root={phantom}", "phantom.sites=3", "phantom.images_per_site=16",
              "phantom.heldout_images=22", "phantom.seed=9", "federation.rounds=4", "federation.min_sites=2",
              "federation.min_available=2", "federation.round_timeout=150", "strategy.fraction_evaluate=0", *TINY_RUN]

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=ENV, preexec_fn=_ctrl_c_enabled)

    try:
        for k, (name, claims) in enumerate((("site-a", "site-a"), ("site-b", "site-b"), ("site-c", "site-a"))):
            keys = _add_site(pki, name, superlink)
            processes.append(_join(phantom, k, superlink, claims, keys, tmp_path / f"s{k}", tmp_path / f"s{k}.log"))
        status = _wait_for_sites(superlink, run_dir, 3, pki)
        assert _online(status) == 3 and all(f"│ {n}" in status for n in ("site-a", "site-b", "site-c")), status

        detached = start(*launch, "--detach", *config)
        _wait_for_rounds(run_dir, 1)
        detached.send_signal(signal.SIGTERM)
        output, _ = detached.communicate(timeout=60)
        assert detached.returncode == 0 and "detached: run" in output, output[-3000:]

        second = subprocess.run([*launch, *config], capture_output=True, text=True, env=ENV, timeout=120)
        assert second.returncode == 2 and "a second run on this folder is refused" in second.stderr, second.stderr
        assert "retina-server stop --run-dir" in second.stderr

        stopped = subprocess.run([*server, "stop", "--run-dir", str(run_dir)], capture_output=True, text=True,
                                 env=ENV, timeout=300)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout and "--resume" in stopped.stdout, \
            stopped.stdout + stopped.stderr
        done = len(_rounds(run_dir))
        assert _rounds(run_dir) == list(range(1, done + 1))

        resumed = start(*launch, "--resume", str(run_dir))
        _wait_for_rounds(run_dir, done + 1)
        resumed.send_signal(signal.SIGINT)  # no terminal: Ctrl-C stops the run, it does not detach
        output, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 130 and "stopped" in output and "Continue with:" in output, output[-3000:]
        assert f"--resume {run_dir}" in output.replace("\n", " ")

        finished = subprocess.run([*launch, "--resume", str(run_dir)], capture_output=True, text=True, env=ENV,
                                  timeout=900)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [1, 2, 3, 4]  # every round once across four commands
        assert all(sorted(r["sites"]) == ["site-a", "site-b"] for r in records)
        impostor = "claims to be site 'site-a' but its key is registered as 'site-c' (rejected)"
        assert all(any(impostor in reason for reason in r["rejected"]) for r in records)
        runs = _cli("retina-server", "status", "--superlink", superlink, "--root-certificates", ca).stdout
        assert "running" not in runs and runs.count("finished:stopped") == 2, runs
    finally:
        _stop_all(processes)


def test_a_lost_site_with_min_available_all_sites_ends_the_run_within_its_deadlines(phantom, pki, tmp_path):
    """Two sites, min_available=2, federated evaluation on; one site dies in round 1. Round 1 still
    aggregates (min_sites=1) and is checkpointed; its evaluation is skipped or answered by the
    survivor; round 2 cannot gather its sites and the run stops with the reason and the resume
    command — within the configured deadlines, not waiting forever."""
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    run_dir = tmp_path / "runs" / "run"
    processes = [_superlink(pki, tmp_path / "link", port, tmp_path / "superlink.log")]
    connect, round_timeout = 20, 60
    try:
        for k in range(2):
            keys = _add_site(pki, f"lost-{k}", superlink)
            processes.append(_join(phantom, k, superlink, f"lost-{k}", keys, tmp_path / f"s{k}", tmp_path / f"s{k}.log"))
        assert _online(_wait_for_sites(superlink, run_dir, 2, pki)) == 2
        start = time.monotonic()
        coordinator = subprocess.Popen(
            [str(BIN / "retina-server"), "run", "--superlink", superlink, "--root-certificates", str(pki / "ca.crt"),
             f"run_dir={run_dir}", f"phantom.root={phantom}", "phantom.sites=3", "phantom.images_per_site=16",
             "phantom.heldout_images=22", "phantom.seed=9", "federation.rounds=3", "federation.min_sites=1",
             "federation.min_available=2", f"federation.connect_timeout={connect}",
             f"federation.round_timeout={round_timeout}", "federation.round_retries=0", *TINY_RUN],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        _wait_for_text(tmp_path / "s1.log", "Receiving: train message", timeout=300)
        os.killpg(processes[2].pid, signal.SIGKILL)  # lost-1 dies in the middle of round 1
        output, _ = coordinator.communicate(timeout=900)
        took = time.monotonic() - start
        assert coordinator.returncode == 2, output[-3000:]
        assert "only 1 of the 2 sites needed were connected" in output and "Continue with:" in output, output[-3000:]
        assert _rounds(run_dir) == [1] and (run_dir / "checkpoints" / "round_0001" / "model.safetensors").is_file()
        # training waits for replies, evaluation for sites and replies, round 2 for sites: nothing longer
        assert took < 2 * round_timeout + 2 * connect + 120, took
    finally:
        _stop_all(processes)
