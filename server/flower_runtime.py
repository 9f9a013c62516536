"""Driving Flower's own processes from our commands (in the environment of
``shared_model.offline_env``): the connection file ``$FLWR_HOME/config.toml``, submitting a run
with ``flwr run`` and waiting for its final status.

``flwr run`` returns once a run is submitted and its exit code does not say whether the run
succeeded, so :func:`wait_for_run` asks the SuperLink's Control API for the run's status (the
request ``flwr ls`` makes, from this process: a ``flwr ls`` process per poll would start a Python
interpreter each time, CPU taken from the sites' training on a small simulation machine), with a
deadline, and raises with Flower's status details when the run failed or stopped. The same client
stops a run (:func:`stop_run`) and lists the registered sites with their names (:func:`list_nodes`).
Flower's own refusals are translated into what an operator can act on (:func:`explain_refusal`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

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
        raise FlowerRunError(f"flwr {' '.join(args)} failed ({proc.returncode}): "
                             f"{proc.stderr.strip() or proc.stdout.strip()}")
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
    """Register a site's public key under its name with the SuperLink (``flwr supernode
    register``) from a temporary FLWR_HOME; returns the node id Flower assigned. A name another
    registered key already has is refused: the name is how the coordinator tells sites apart."""
    with tempfile.TemporaryDirectory(prefix="retinafl-register-") as home:
        write_connections(Path(home), [connection])
        env = offline_env(Path(home))
        with control_client(connection, env) as client:
            taken = [n.node_id for n in list_nodes(client) if n.name == name and n.status != "unregistered"]
        if taken:
            raise FlowerRunError(f"site name {name!r} is already registered with {connection.address} (node id "
                                 f"{taken[0]}): every site needs its own name")
        reply = flwr_json(["supernode", "register", str(public_key), connection.name, "--name", name], env)
    if not reply.get("success", True) or "node-id" not in reply:
        raise FlowerRunError(f"registering {public_key} was refused: {reply}")
    return int(reply["node-id"])


def submit_run(app_dir: Path, connection: str, env: dict[str, str], federation_config: dict | None = None) -> int:
    """``flwr run APP CONNECTION`` -> the new run's id."""
    args = ["run", str(app_dir), connection, "--format", "json"]
    if federation_config:
        args += ["--federation-config", " ".join(f"{k}={json.dumps(v)}" for k, v in federation_config.items())]
    try:
        reply = _json_tail(_flwr(args, env))
    except FlowerRunError as exc:
        raise FlowerRunError(explain_refusal(str(exc), connection, env)) from exc
    if not reply.get("success", False) or "run-id" not in reply:
        said = str(reply.get("error-message", reply)).strip().split("\n\n")[-1]  # after Flower's app warnings
        raise FlowerRunError(explain_refusal(f"flwr run was refused: {said}", connection, env))
    return int(reply["run-id"])


def explain_refusal(message: str, connection: str, env: dict[str, str]) -> str:
    """One sentence naming the cause and the fix of a refused ``flwr`` call (Flower's own
    message follows it), or the message unchanged when the cause is not a known one."""
    lowered = message.lower()
    address = _connection_address(connection, env)
    if "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
        cause = (f"the TLS handshake with the SuperLink at {address} failed: give --root-certificates the "
                 "federation's CA (pki/ca.crt of retina-server pki init)")
    elif any(word in lowered for word in ("unavailable", "connection refused", "failed to connect", "resolve")):
        cause = (f"the SuperLink at {address} cannot be reached: check that it is running (retina-server "
                 "superlink), the address and port, and --root-certificates (the federation's CA)")
    else:
        return message
    return f"{cause}. Flower said: {message}"


def _connection_address(connection: str, env: dict[str, str]) -> str:
    import tomllib

    try:
        table = tomllib.loads((Path(env["FLWR_HOME"]) / "config.toml").read_text())
        return str(table["superlink"][connection]["address"])
    except (OSError, KeyError, ValueError):
        return connection


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
    HTTP port ``env`` gives it. A SuperLink that cannot be reached, or answers with an error, is
    a FlowerRunError naming its address."""
    import httpx
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.supercore.error.base import FlowerError

    if connection.address == LOCAL_ADDRESS:
        port = env.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091")  # Flower's default
        connection = Connection(connection.name, f"127.0.0.1:{port}", insecure=True)
    link = SuperLinkConnection(name=connection.name, address=connection.address, insecure=connection.insecure,
                               root_certificates=connection.root_certificates)
    with _flwr_home(env["FLWR_HOME"]), redirect_stdout(io.StringIO()):  # Flower's "Using SuperLink: ..." line
        client = init_http_client_from_connection(link)
    try:
        yield client
    except (httpx.HTTPError, FlowerError) as exc:
        raise FlowerRunError(f"the SuperLink at {connection.address}: {exc}") from exc
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


def stop_run(client, run_id: int) -> bool:
    """Ask the SuperLink to stop a run (its ServerApp exits at its next call to the SuperLink);
    False when the run had already finished."""
    from flwr.proto.control_pb2 import StopRunRequest  # pylint: disable=no-name-in-module

    try:
        return bool(client.StopRun(StopRunRequest(run_id=run_id)).success)
    except Exception as exc:  # noqa: BLE001 — Flower raises its own error types for a finished run
        if run_status(client, run_id)[0].startswith("finished"):
            return False
        raise FlowerRunError(f"stopping run {run_id} failed: {exc}") from exc


def list_nodes(client) -> list:
    """The SuperLink's sites (Flower ``NodeInfo``: node id, registered name, status, times)."""
    from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=no-name-in-module

    return list(client.ListNodes(ListNodesRequest()).nodes_info)


def wait_for_run(run_id: int, connection: Connection, env: dict[str, str], timeout: float, poll: float = 1.0,
                 on_poll=None, unreachable_timeout: float = 300.0) -> None:
    """Block until the run finishes; FlowerRunError unless it completed (or after ``timeout`` s,
    when the run is stopped). ``on_poll()`` runs at every poll (e.g. to print rounds as they
    complete). A SuperLink that stops answering is asked again for ``unreachable_timeout`` s (it
    may be restarting) before the wait gives up."""
    deadline = time.monotonic() + timeout
    silent_since = None
    with control_client(connection, env) as client:
        while True:
            if on_poll is not None:
                on_poll()
            try:
                status, details = run_status(client, run_id)
                silent_since = None
            except FlowerRunError as exc:
                if "unknown to the SuperLink" in str(exc):
                    raise
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > unreachable_timeout:
                    raise FlowerRunError(f"the SuperLink at {connection.address} has not answered for "
                                         f"{unreachable_timeout:.0f} s ({exc})") from exc
                time.sleep(poll)
                continue
            if status == FINISHED:
                return
            if status.startswith("finished"):
                raise FlowerRunError(f"run {run_id} {status}: {details}")
            if time.monotonic() > deadline:
                stop_run(client, run_id)
                raise FlowerRunError(f"run {run_id} still {status} after {timeout:.0f} s; stopped")
            time.sleep(poll)


def run_logs(run_id: int, connection: str, env: dict[str, str]) -> str:
    """What the run's ServerApp (and, in simulation, its ClientApps) printed."""
    try:
        return _flwr(["log", str(run_id), connection, "--show"], env, timeout=60)
    except (FlowerRunError, subprocess.TimeoutExpired) as exc:
        return f"(logs unavailable: {exc})"


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


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a live process, from /proc (None once it is gone)."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[1]), int(fields[2])) if fields else None


def process_tree(roots: list[int]) -> list[int]:
    """``roots``, all their descendants and every member of their process groups (Flower's
    SuperExec, ``flwr-simulation`` and Ray's gcs_server, raylet and workers under a local
    SuperLink), read before anything is stopped: a child whose parent dies is re-parented and
    could no longer be found."""
    stats = {int(p.name): _proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    stats = {pid: st for pid, st in stats.items() if st is not None}
    tree, frontier = set(roots) & set(stats), list(set(roots) & set(stats))
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    groups = {stats[pid][1] for pid in tree} - {os.getpgrp()}
    tree.update(pid for pid, (_, pgid) in stats.items() if pgid in groups)
    tree.discard(os.getpid())
    return sorted(tree)


KILL_WAIT_SECONDS = 10.0  # a SIGKILLed process is gone once the kernel has freed its memory


def stop_process_tree(roots: list[int], at_once: bool = False, timeout: float = 10.0) -> None:
    """Stop ``roots`` and everything :func:`process_tree` finds under them, and return once they
    are gone. Gracefully (SIGTERM, SIGKILL after ``timeout`` s), or ``at_once``: frozen first
    (SIGSTOP), so none of them writes another byte, then killed."""
    pids = process_tree(roots)
    for sig in ((signal.SIGSTOP, signal.SIGKILL) if at_once else (signal.SIGTERM,)):
        _signal_all(pids, sig)
    if _wait_gone(pids, timeout):
        return
    _signal_all(pids, signal.SIGKILL)
    _wait_gone(pids, KILL_WAIT_SECONDS)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], timeout: float) -> bool:
    """Whether every one of ``pids`` ended (reaped where it is our child) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if not any(_alive(pid) for pid in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` has not ended. Our own child has ended once reaped (the kernel lets it be
    reaped only when its last thread has exited); any other process once :func:`is_running` says so."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return not finished
    except ChildProcessError:
        return is_running(pid)


def is_running(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs. A process whose main thread has ended shows as a
    zombie while its other threads still run or exit, so the process's own state is not enough."""
    return any((fields := _stat_fields(stat)) and fields[0] != "Z" for stat in Path(f"/proc/{pid}/task").glob("*/stat"))


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, D, Z, ...), None once it is gone."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return fields[0] if fields else None


def _stat_fields(stat: Path) -> list[str] | None:
    """The fields of a /proc stat file after the command name (state first), None once it is gone."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split() or None
    except (OSError, IndexError):
        return None
