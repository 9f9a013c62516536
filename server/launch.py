"""Launching a federated run on a SuperLink and following it: take the run folder (one live run
and one command per folder, ``server/run_lock.py``), write it (resolved ``config.yaml``, the
generated Flower app, a private ``FLWR_HOME`` with the connection), submit the run, print each
round as its ``metrics.jsonl`` line appears, wait for Flower's final status, keep the run's log
in ``flower.log``. An interrupted command stops its run (or detaches from it) and says where
the run folder stands and how to continue it. Used by ``retina-sim`` (local simulation
SuperLink) and ``retina-server run`` (a deployed SuperLink)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from server.flower_app_folder import write_flower_app
from server.flower_runtime import (
    LOCAL_ADDRESS,
    Connection,
    FlowerRunError,
    control_client,
    explain_refusal,
    run_logs,
    run_status,
    stop_run,
    submit_run,
    wait_for_run,
    write_connections,
)
from server.round_checkpoint import latest_round, scan_rounds
from server.round_log import round_row, site_summary, sites_summary
from server.run_lock import RUN_LOCK, LaunchLock, RunFolderBusy, describe, is_held, read_launch, wait_until_released
from shared_model import wire
from shared_model.atomic_files import write_text_atomic
from shared_model.conf import write_resolved_config
from shared_model.config import FederationAppConfig
from shared_model.offline_env import offline_env
from shared_model.reporting.metrics_log import read_metrics
from shared_model.run_folder import check_run_folder

STOP_TIMEOUT = 120.0  # seconds a stopped run's ServerApp gets to let go of the run folder


def with_absolute_paths(cfg: FederationAppConfig) -> FederationAppConfig:
    """The same config with every path absolute: the ServerApp and ClientApps run in other
    processes with other working directories."""
    absolute = lambda p: str(Path(p).expanduser().resolve())  # noqa: E731
    sets = [replace(s, path=absolute(s.path), image_root=absolute(s.image_root) if s.image_root else None)
            for s in cfg.eval.sets]
    return replace(cfg, run_dir=absolute(cfg.run_dir),
                   phantom=replace(cfg.phantom, root=absolute(cfg.phantom.root)),
                   data=replace(cfg.data, manifests=[absolute(m) for m in cfg.data.manifests]),
                   eval=replace(cfg.eval, sets=sets),
                   federation=replace(cfg.federation,
                                      site_manifests=[",".join(absolute(part) for part in m.split(","))
                                                      for m in cfg.federation.site_manifests]))


def _run_deadline(cfg: FederationAppConfig) -> float:
    """The longest a run can take when every wait runs to its deadline: per round, each attempt
    waits for sites and for replies (four exchanges under SecAgg+), then federated evaluation
    waits for sites and replies once."""
    fed = cfg.federation
    exchanges = 4 if cfg.secagg.enabled else 1
    per_round = (fed.round_retries + 1) * (fed.connect_timeout + exchanges * fed.round_timeout) \
        + fed.connect_timeout + fed.round_timeout
    return fed.rounds * per_round + 600


def round_table(records: list[dict]) -> Table:
    """Rows of ``metrics.jsonl``: each site's loss (ε under DP-SGD, where losses are not sent),
    one site per line, the aggregate's zero-shot ACA at the server (one set per line) and at the
    sites, time, bytes — narrow enough for 80 columns."""
    label = sites_summary(records[-1])[0] if records else "loss"
    table = Table(title="federated rounds")
    for column in ("round", f"site {label}", "zero-shot ACA", "at sites", "s", "MiB"):
        table.add_column(column, overflow="fold")
    for r in records:
        evals = r.get("server_eval") or {}
        aca = "\n".join(f"{v['aca']:.3f}" if len(evals) == 1 else f"{task} {v['aca']:.3f}" for task, v in evals.items())
        sites = "\n".join(f"{name} {site_summary(m)}" for name, m in r["sites"].items())
        fed = r.get("federated_eval", {}).get(wire.ZERO_SHOT_ACA)
        seconds = "–" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        table.add_row(str(r["round"]), sites or "–", aca or "–", "–" if fed is None else f"{fed:.3f}",
                      seconds, f"{(r['bytes_sent'] + r['bytes_received']) / 2 ** 20:.0f}")
    last = (records[-1].get("server_eval") or {}) if records else {}
    if len(last) == 1:
        table.caption = f"zero-shot ACA on {next(iter(last))}"
    return table


@dataclass(frozen=True)
class Launch:
    """How a run is launched and what its command does when it ends or is interrupted."""

    connection: Connection
    resume_command: str  # the command line that continues the run folder (printed on a stop or failure)
    env_extra: dict[str, str] = field(default_factory=dict)
    federation_config: dict = field(default_factory=dict)
    # Runs last, also on failure or interrupt (stopping a local SuperLink): stop_local(home, interrupted).
    stop_local: Callable[[Path, bool], None] | None = None
    detach: bool = False  # on Ctrl-C / SIGTERM leave the run going on the SuperLink instead of stopping it


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C but never with a question (a service manager asked)."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def raise_terminated(signum, frame):  # noqa: ARG001 — the signal handler signature
        raise _Terminated()

    before = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def where_it_stands(run_dir: Path, resume_command: str) -> str:
    """The run folder's last complete round and the command that continues it."""
    found = latest_round(run_dir)
    done = f"rounds up to {found[1].round} are complete ({found[0].relative_to(run_dir)})" if found \
        else "no round is complete yet"
    return f"{run_dir}: {done}. Continue with:\n  {resume_command}"


def _refuse_live_owner(run_dir: Path, connection: Connection, env: dict[str, str]) -> None:
    """RunFolderBusy when the run that last owned ``run_dir`` is still alive: its ServerApp holds
    the folder, or the SuperLink still runs it (its command was interrupted or detached)."""
    previous = read_launch(run_dir)
    if is_held(run_dir / RUN_LOCK):
        who = describe(previous) if previous else "a live run"
        raise RunFolderBusy(f"{run_dir} is being written by {who}: a second run on this folder is refused. "
                            f"Stop it with: retina-server stop --run-dir {run_dir}")
    if previous is None or previous.run_id is None or connection.address == LOCAL_ADDRESS:
        return  # a local SuperLink lives only as long as its retina-sim command
    with control_client(connection, env) as client:
        try:
            status, _ = run_status(client, previous.run_id)
        except FlowerRunError as exc:
            if "unknown to the SuperLink" in str(exc):
                return
            raise FlowerRunError(explain_refusal(str(exc), connection.name, env)) from exc
    if not status.startswith("finished"):
        raise RunFolderBusy(f"{run_dir}: {describe(previous)} is still {status} on the SuperLink (its command "
                            f"was interrupted or detached); a second run on this folder is refused. Stop it with: "
                            f"retina-server stop --run-dir {run_dir}")


def _show_resume_point(run_dir: Path, console: Console) -> None:
    """Say which round a resumed run continues from, and which newer checkpoints it skips."""
    found, skipped = scan_rounds(run_dir)
    for reason in skipped:
        console.print(f"[yellow]warning: {reason}[/yellow]", highlight=False, soft_wrap=True)
    console.print(f"resuming {run_dir} after round {found[1].round}" if found else
                  f"{run_dir} holds no complete round: the run starts at round 1", highlight=False, soft_wrap=True)


def _ask_stop_or_detach(console: Console) -> bool:
    """True: stop the run; False: detach from it. A second Ctrl-C or a closed stdin stops it."""
    from rich.prompt import Prompt

    try:
        return Prompt.ask("\nStop the run on the SuperLink, or detach and let it continue?", choices=["stop", "detach"],
                          default="stop", console=console) == "stop"
    except (KeyboardInterrupt, EOFError):
        return True


def stop_and_wait(client, run_id: int, run_dir: Path, console: Console) -> bool:
    """Stop ``run_id`` on the SuperLink and wait for its ServerApp to let go of ``run_dir``;
    False when the run had already ended."""
    if not stop_run(client, run_id):
        return False
    if not wait_until_released(run_dir, STOP_TIMEOUT):
        console.print(f"[yellow]run {run_id} was stopped but its ServerApp still holds {run_dir} after "
                      f"{STOP_TIMEOUT:.0f} s[/yellow]", highlight=False)
    return True


def _interrupted(run_id: int, run_dir: Path, launch: Launch, env: dict[str, str], console: Console,
                 asked: bool) -> int:
    """Stop the run (or detach from it) after Ctrl-C / SIGTERM; returns the command's exit status."""
    if launch.connection.address != LOCAL_ADDRESS:
        stop = not launch.detach and (not asked or not sys.stdin.isatty() or _ask_stop_or_detach(console))
        if not stop:
            console.print(f"detached: run {run_id} continues on {launch.connection.address}. Follow it with "
                          f"retina-server status --run-dir {run_dir}; stop it with retina-server stop --run-dir "
                          f"{run_dir}", highlight=False, soft_wrap=True)
            return 0
        console.print(f"stopping run {run_id} ...", highlight=False)
        try:
            with control_client(launch.connection, env) as client:
                stop_and_wait(client, run_id, run_dir, console)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted again: run {run_id} may still be running; stop it with "
                          f"retina-server stop --run-dir {run_dir}[/yellow]", highlight=False, soft_wrap=True)
            return 130
    console.print(f"run {run_id} stopped. {where_it_stands(run_dir, launch.resume_command)}", highlight=False,
                  soft_wrap=True)
    return 130


def launch_run(cfg: FederationAppConfig, launch: Launch, console: Console | None = None) -> list[dict]:
    """Take the run folder (refused while another run or command owns it), write it (resolved
    config, Flower app, FLWR_HOME), submit the run, print rounds as they complete, wait for the
    final status, save the run's log to ``flower.log``. Ctrl-C / SIGTERM stops the run (or
    detaches: ``launch.detach``, or the user's answer at a terminal) and exits with the run
    folder's state; a failed run's error ends with the command that continues it. Returns the
    rounds' records."""
    from server.compatibility import check_federation  # the model stack: not loaded by ``stop``

    console = console or Console()
    connection = launch.connection
    transport = ("simulation (one machine, no network)" if connection.address == LOCAL_ADDRESS
                 else "insecure (no TLS)" if connection.insecure else "TLS")
    cfg = check_federation(replace(cfg, federation=replace(cfg.federation, transport=transport)))
    run_dir = Path(cfg.run_dir)
    home = run_dir / "flwr-home"
    check_run_folder(run_dir, 0)  # writable; the ServerApp checks the space its checkpoints need
    lock = LaunchLock.acquire(run_dir, connection.address, connection.insecure, connection.root_certificates)
    run_id = None
    interrupted = False
    keep_log = True  # the run's log, once it has ended
    try:
        write_connections(home, [connection])
        env = offline_env(home, launch.env_extra)
        _refuse_live_owner(run_dir, connection, env)
        if cfg.resume:
            _show_resume_point(run_dir, console)
        write_resolved_config(cfg, run_dir)
        app_dir = write_flower_app(run_dir / "retinafl-app", cfg)
        shown = len(read_metrics(run_dir))

        def show_new_rounds() -> None:
            nonlocal shown
            records = read_metrics(run_dir)
            for record in records[shown:]:
                console.print(round_row(record, record["seconds"]))
            shown = len(records)

        with _sigterm_interrupts():
            try:
                run_id = submit_run(app_dir, connection.name, env, launch.federation_config)
                lock.submitted(run_id)
                console.print(f"run {run_id} submitted to {connection.address}; run folder {run_dir}")
                wait_for_run(run_id, connection, env, _run_deadline(cfg), on_poll=show_new_rounds,
                             unreachable_timeout=cfg.federation.connect_timeout)
            except KeyboardInterrupt as exc:
                interrupted = True
                if launch.stop_local is not None:
                    launch.stop_local(home, True)
                if run_id is None:
                    raise
                show_new_rounds()
                code = _interrupted(run_id, run_dir, launch, env, console, not isinstance(exc, _Terminated))
                # A detached run goes on (Flower would stream its log until it ends); a killed local
                # SuperLink, asked for logs, would start a new one.
                keep_log = code != 0 and connection.address != LOCAL_ADDRESS
                sys.exit(code)
            except FlowerRunError as exc:
                show_new_rounds()
                if run_id is None:
                    raise
                raise FlowerRunError(f"{exc}\n{where_it_stands(run_dir, launch.resume_command)}") from exc
    finally:
        if run_id is not None and keep_log:
            write_text_atomic(run_dir / "flower.log", run_logs(run_id, connection.name, env))
        if launch.stop_local is not None and not interrupted:
            launch.stop_local(home, False)
        lock.release()
    show_new_rounds()
    records = read_metrics(run_dir)
    console.print(round_table(records))
    return records
