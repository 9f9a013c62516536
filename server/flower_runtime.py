"""Driving Flower's own processes from our commands (in the environment of
``shared_model.offline_env``): the connection file ``$FLWR_HOME/config.toml``, submitting a run
with ``flwr run`` and waiting for its final status.

``flwr run`` returns once a run is submitted and its exit code does not say whether the run
succeeded, so :func:`wait_for_run` asks the SuperLink's Control API for the run's status (the
request ``flwr ls`` makes, from this process: a ``flwr ls`` process per poll costs about a second
of CPU, taken from the sites' training on a small simulation machine), with a deadline, and
raises with Flower's status details when the run failed or stopped.
"""

from __future__ import annotations

import logging

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import tomli_w

from shared_model.atomic_files import write_text_atomic
from shared_model.offline_env import offline_env

FINISHED = "finished:completed"
LOCAL_ADDRESS = ":local:"  # Flower's magic address of the local (simulation) SuperLink


class FlowerRunError(RuntimeError):
    """A Flower run failed, was stopped, or did not finish in time."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Connection:
    """One ``[superlink.NAME]`` entry: ``:local:`` (simulation) or ``HOST:PORT`` of a SuperLink."""

    name: str
    address: str
    insecure: bool = False
    root_certificates: str | None = None


def write_connections(home: Path, connections: list[Connection]) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with the given SuperLink connections (first = default)."""
    home.mkdir(parents=True, exist_ok=True)
    table: dict = {"superlink": {"default": connections[0].name}}
    for conn in connections:
        entry: dict = {"address": conn.address}
        if conn.insecure:
            entry["insecure"] = True
        if conn.root_certificates:
            entry["root-certificates"] = conn.root_certificates
        table["superlink"][conn.name] = entry
    path = home / "config.toml"
    write_text_atomic(path, tomli_w.dumps(table))
    return path


def _flwr(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise FlowerRunError(f"flwr {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _json_tail(text: str) -> dict:
    start = text.find("{")
    if start < 0:
        raise FlowerRunError(f"flwr printed no JSON: {text.strip()[:500]}")
    return json.loads(text[start:])


def flwr_json(args: list[str], env: dict[str, str]) -> dict:
    """``flwr ARGS --format json`` parsed."""
    return _json_tail(_flwr([*args, "--format", "json"], env))


def register_site_key(public_key: Path, name: str, connection: Connection) -> int:
    """Register a site's public key with the SuperLink (``flwr supernode register``) from a
    temporary FLWR_HOME; returns the node id Flower assigned."""
    with tempfile.TemporaryDirectory(prefix="retinafl-register-") as home:
        write_connections(Path(home), [connection])
        reply = flwr_json(["supernode", "register", str(public_key), connection.name, "--name", name],
                          offline_env(Path(home)))
    if not reply.get("success", True) or "node-id" not in reply:
        raise FlowerRunError(f"registering {public_key} was refused: {reply}")
    return int(reply["node-id"])


def submit_run(app_dir: Path, connection: str, env: dict[str, str], federation_config: dict | None = None) -> int:
    """``flwr run APP CONNECTION`` -> the new run's id."""
    args = ["run", str(app_dir), connection, "--format", "json"]
    if federation_config:
        args += ["--federation-config", " ".join(f"{k}={json.dumps(v)}" for k, v in federation_config.items())]
    reply = _json_tail(_flwr(args, env))
    if not reply.get("success", False) or "run-id" not in reply:
        raise FlowerRunError(f"flwr run was refused: {reply}")
    return int(reply["run-id"])


@contextmanager
def _flwr_home(home: str) -> Iterator[None]:
    """``FLWR_HOME`` set in this process while Flower's CLI helpers read it (credentials)."""
    before = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = home
    try:
        yield
    finally:
        if before is None:
            del os.environ["FLWR_HOME"]
        else:
            os.environ["FLWR_HOME"] = before


@contextmanager
def control_client(connection: Connection, env: dict[str, str]) -> Iterator:
    """Flower's Control API client for ``connection``, opened in this process as ``flwr ls``
    opens it (runtime-version and account interceptors); the local SuperLink is reached on the
    HTTP port ``env`` gives it."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    # httpx logs every request at INFO: one line per status poll, every second, in the user's console.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if connection.address == LOCAL_ADDRESS:
        port = env.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091")  # Flower's default
        connection = Connection(connection.name, f"127.0.0.1:{port}", insecure=True)
    link = SuperLinkConnection(name=connection.name, address=connection.address, insecure=connection.insecure,
                               root_certificates=connection.root_certificates)
    with _flwr_home(env["FLWR_HOME"]):
        client = init_http_client_from_connection(link)
    try:
        yield client
    finally:
        client.close()


def run_status(client, run_id: int) -> tuple[str, str]:
    """(status, details) of a run, e.g. ("finished:failed", "Simulation failed with exception ...")."""
    import httpx
    from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.error.base import FlowerError

    try:
        reply = client.ListRuns(ListRunsRequest(run_id=run_id))
    except (httpx.HTTPError, FlowerError, ValueError) as exc:
        raise FlowerRunError(f"asking the SuperLink for run {run_id} failed: {exc}") from exc
    if run_id not in reply.run_dict:
        raise FlowerRunError(f"run {run_id} is unknown to the SuperLink")
    status = reply.run_dict[run_id].status
    text = f"{status.status}:{status.sub_status}" if status.sub_status else status.status
    return text, status.details


def wait_for_run(run_id: int, connection: Connection, env: dict[str, str], timeout: float, poll: float = 1.0,
                 on_poll=None) -> None:
    """Block until the run finishes; FlowerRunError unless it completed (or after ``timeout`` s).
    ``on_poll()`` runs at every poll (e.g. to print rounds as they complete)."""
    deadline = time.monotonic() + timeout
    with control_client(connection, env) as client:
        while True:
            if on_poll is not None:
                on_poll()
            status, details = run_status(client, run_id)
            if status == FINISHED:
                return
            if status.startswith("finished"):
                raise FlowerRunError(f"run {run_id} {status}: {details}")
            if time.monotonic() > deadline:
                _flwr(["stop", str(run_id), connection.name], env)
                raise FlowerRunError(f"run {run_id} still {status} after {timeout:.0f} s; stopped")
            time.sleep(poll)


def run_logs(run_id: int, connection: str, env: dict[str, str]) -> str:
    """What the run's ServerApp (and, in simulation, its ClientApps) printed."""
    try:
        return _flwr(["log", str(run_id), connection, "--show"], env, timeout=60)
    except (FlowerRunError, subprocess.TimeoutExpired) as exc:
        return f"(logs unavailable: {exc})"


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a process we started, SIGKILL it if it has not exited after ``timeout`` s."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for its disappearance instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            finished = 0
        if finished:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def local_superlink_pids(home: Path) -> list[int]:
    """PIDs of the local (simulation) SuperLink that ``flwr run`` started for this FLWR_HOME."""
    marker = str(home / "local-superlink")
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "flower-superlink" in cmdline and marker in cmdline:
                pids.append(int(proc.name))
    return pids
