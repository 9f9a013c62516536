"""``retina-server``: the coordinator's commands.

  retina-server pki init --dir PKI --host coordinator.example.org --host 10.0.0.5
  retina-server pki add-site NAME --dir PKI [--public-key site.pub] [--superlink HOST:PORT]
  retina-server superlink --state-dir /srv/retinafl [--host 0.0.0.0] [--port 9092] (--certs-dir PKI | --insecure)
  retina-server run --superlink HOST:PORT [--root-certificates PKI/ca.crt | --insecure] [--config-dir DIR]
                    [HYDRA OVERRIDES ...]
  retina-server run --superlink HOST:PORT ... --resume RUN_DIR [HYDRA OVERRIDES ...]
  retina-server run ... --detach          (Ctrl-C / SIGTERM leaves the run going instead of stopping it)
  retina-server stop --run-dir RUN_DIR [--superlink HOST:PORT --root-certificates PKI/ca.crt]
  retina-server status --superlink HOST:PORT [--root-certificates PKI/ca.crt | --insecure] [--run-dir RUN_DIR]

``pki`` makes the federation's CA, the SuperLink certificate and the sites' key pairs
(``server/pki.py``); ``add-site --superlink`` also registers the site's public key, without
which the SuperLink refuses the site. ``superlink`` becomes Flower's SuperLink (same PID) over
TLS with SuperNode authentication, its state in ``STATE_DIR/state.db`` so a restart remembers
runs and registered sites; one port serves sites, the run API and ``status``. ``run`` launches
the federated run (the config is composed like ``retina-sim``'s), prints rounds as they complete
and waits for the end; ``--resume`` continues a run folder from its last complete round. A run
folder belongs to one live run: a second ``run`` on it is refused. Ctrl-C asks whether to stop
the run or detach from it (SIGTERM, or no terminal: stop, unless ``--detach``); ``stop`` stops
the run that owns a folder from anywhere. ``status`` lists sites (by their registered names) and
runs, and the current round and last metrics of a run folder.
TLS is the default everywhere; ``--insecure`` must be given explicitly and prints a warning.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.table import Table

TLS_FILES = ("ca.crt", "server.pem", "server.key")
INSECURE_WARNING = ("[yellow]warning: --insecure: no TLS — updates and metrics travel unencrypted and sites are "
                    "not authenticated. Use it only for tests on loopback.[/yellow]")


def _security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--root-certificates", help="CA certificate of the SuperLink's TLS certificate "
                       "(default: the system's CAs)")
    group.add_argument("--insecure", action="store_true", help="no TLS (loopback tests only; prints a warning)")


# The SuperLink and the ServerApp it starts hold one site's update at a time (server/round_fold.py):
# glibc maps each array of 1 MiB or more on its own and unmaps it when freed, so that update's
# memory goes back to the system before the next is pulled (with glibc's adaptive threshold, freed
# update arrays land on the heap, where they stay resident: 3.4 model copies at the peak instead of
# 3.0, bench/aggregation.py). A value already in the environment is kept.
COORDINATOR_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def superlink_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-superlink`` command line of the coordinator."""
    state_dir = Path(args.state_dir).resolve()
    command = [str(Path(sys.executable).parent / "flower-superlink"), "--database", str(state_dir / "state.db"),
               "--host", args.host, "--port", str(args.port), "--disable-runtime-dependency-installation"]
    if args.insecure:
        return command + ["--insecure"]
    certs = Path(args.certs_dir).resolve()
    missing = [name for name in TLS_FILES if not (certs / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{certs}: missing {', '.join(missing)} (make them with retina-server pki init)")
    return command + ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
                      "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth"]


def _superlink(args: argparse.Namespace) -> NoReturn:
    from shared_model.offline_env import offline_env

    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    command = superlink_command(args)
    if args.insecure:
        Console(stderr=True).print(INSECURE_WARNING, highlight=False)
    Console().print(f"SuperLink on {args.host}:{args.port} "
                    f"({'insecure' if args.insecure else 'TLS, site keys required'}), "
                    f"state in {state_dir / 'state.db'}", highlight=False)
    sys.stdout.flush()
    os.execve(command[0], command, offline_env(state_dir / "flwr-home", {
        k: v for k, v in COORDINATOR_MALLOC.items() if k not in os.environ}))


def _connection(args: argparse.Namespace):
    from server.flower_runtime import Connection

    if args.insecure:
        Console(stderr=True).print(INSECURE_WARNING, highlight=False)
    return Connection("coordinator", args.superlink, insecure=args.insecure,
                      root_certificates=str(Path(args.root_certificates).resolve()) if args.root_certificates else None)


def _run_config(args: argparse.Namespace):
    """The typed ``federation`` config of ``run``: the packaged one with the overrides, or, with
    ``--resume``, that run folder's saved ``config.yaml`` with the overrides on top (and resuming it)."""
    from dataclasses import replace

    from shared_model.conf import compose_app

    if args.resume is None:
        return compose_app("federation", args.overrides, config_dir=args.config_dir)
    saved = args.resume / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved}: not found; --resume needs a run folder written by retina-server run")
    cfg = compose_app("federation", args.overrides, config_dir=args.config_dir, saved=saved)
    return replace(cfg, resume=True, run_dir=str(args.resume.resolve()))


def _resume_command(conn, run_dir: str | Path) -> str:
    """The ``retina-server run --resume`` command line that continues ``run_dir`` over ``conn``."""
    import shlex

    security = ["--insecure"] if conn.insecure else \
        ["--root-certificates", conn.root_certificates] if conn.root_certificates else []
    return shlex.join(["retina-server", "run", "--superlink", conn.address, *security, "--resume", str(run_dir)])


def _run(args: argparse.Namespace) -> int:
    from server.launch import Launch, launch_run, with_absolute_paths
    from shared_model.data.embedded import ensure_phantom

    cfg = with_absolute_paths(_run_config(args))
    if cfg.phantom.ensure and cfg.eval.sets:
        ensure_phantom(cfg.phantom)  # the default held-out evaluation set lives at the coordinator
    conn = _connection(args)
    launch_run(cfg, Launch(conn, _resume_command(conn, cfg.run_dir), detach=args.detach))
    return 0


def _stop(args: argparse.Namespace) -> int:
    """Stop the run that owns a run folder (the one its launch.lock names) and wait for its
    ServerApp to let go of the folder."""
    from server.flower_runtime import Connection, control_client, write_connections
    from server.launch import stop_and_wait, where_it_stands
    from server.run_lock import describe, read_launch
    from shared_model.offline_env import offline_env

    run_dir = Path(args.run_dir).resolve()
    record = read_launch(run_dir)
    if record is None or record.run_id is None:
        raise ValueError(f"{run_dir}: no run was launched from this folder (no launch.lock with a run id)")
    conn = _connection(args) if args.superlink else Connection(
        "coordinator", record.superlink, insecure=record.insecure, root_certificates=record.root_certificates)
    if conn.address == ":local:":
        raise ValueError(f"{run_dir}: {describe(record)} is a retina-sim run; stop it with Ctrl-C "
                         f"(or kill {record.pid})")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="retinafl-stop-") as home:
        write_connections(Path(home), [conn])
        with control_client(conn, offline_env(Path(home))) as client:
            stopped = stop_and_wait(client, record.run_id, run_dir, console)
    console.print(f"run {record.run_id} {'stopped' if stopped else 'had already ended'}", highlight=False)
    console.print(where_it_stands(run_dir, _resume_command(conn, run_dir)), highlight=False, soft_wrap=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    from server.flower_runtime import control_client, flwr_json, list_nodes, write_connections
    from shared_model.offline_env import offline_env
    from shared_model.reporting.metrics_log import read_metrics

    console = Console()
    conn = _connection(args)
    with tempfile.TemporaryDirectory(prefix="retinafl-status-") as home:  # a query leaves no files behind
        write_connections(Path(home), [conn])
        env = offline_env(Path(home))
        with control_client(conn, env) as client:
            nodes = [n for n in list_nodes(client) if n.status != "unregistered"]
        runs = flwr_json(["ls", conn.name], env).get("runs", [])
    table = Table(title=f"sites at {args.superlink}")
    table.add_column("site")
    table.add_column("node id", no_wrap=True, min_width=20)  # uint64: up to 20 digits, never cut
    table.add_column("status")
    table.add_column("online since")
    for node in sorted(nodes, key=lambda n: n.name or f"~{n.node_id}"):
        table.add_row(node.name or "–", str(node.node_id), node.status,
                      node.last_activated_at[:19].replace("T", " ") if node.status == "online" else "")
    console.print(table)
    table = Table(title="runs")
    for column in ("run id", "status", "details"):
        table.add_column(column)
    for run in runs:
        table.add_row(str(run.get("run-id")), str(run.get("status")), str(run.get("status-details", "")))
    console.print(table)
    if args.run_dir:
        records = read_metrics(Path(args.run_dir))
        if records:
            last = records[-1]
            aca = (", ".join(f"{k} {v['aca']:.3f}" for k, v in (last.get("server_eval") or {}).items())
                   or "not evaluated")
            console.print(f"{args.run_dir}: round {last['round']} complete; sites {sorted(last['sites'])}; "
                          f"zero-shot ACA {aca}", highlight=False, soft_wrap=True)
        else:
            console.print(f"{args.run_dir}: no round complete yet", highlight=False)
    return 0


def _pki(args: argparse.Namespace) -> int:
    from server.flower_runtime import Connection, register_site_key
    from server.pki import add_site, check_public_key, init_pki, site_dir

    console = Console()
    folder = Path(args.dir).resolve()
    if args.pki_command == "init":
        written = init_pki(folder, args.host, args.days)
        console.print(f"wrote {', '.join(p.name for p in written)} to {folder} (keys mode 0600). Start the SuperLink "
                      f"with --certs-dir {folder}; give sites {folder / 'ca.crt'}.", highlight=False)
        return 0
    if args.public_key:
        public = Path(args.public_key).resolve()
        check_public_key(public)
        console.print(f"site {args.name}: using its own public key {public}", highlight=False)
    else:
        private, public = add_site(folder, args.name)
        console.print(f"site {args.name}: key pair in {site_dir(folder, args.name)} (private key mode 0600: move "
                      f"{private.name} to the site over a secure channel, then delete it here)", highlight=False)
    if args.superlink:
        node_id = register_site_key(public, args.name, Connection("coordinator", args.superlink,
                                                                  root_certificates=str(folder / "ca.crt")))
        console.print(f"site {args.name}: public key registered with {args.superlink} (node id {node_id})",
                      highlight=False)
    else:
        console.print(f"not registered yet: run this again with --public-key {public} --superlink HOST:PORT "
                      "once the SuperLink is up", highlight=False, soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="retina-server", description="RetinaFL coordinator")
    commands = parser.add_subparsers(dest="command", required=True)
    link = commands.add_parser("superlink", help="run Flower's SuperLink for this federation")
    link.add_argument("--state-dir", required=True, help="folder of the SuperLink's database (kept across restarts)")
    link.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for remote sites)")
    link.add_argument("--port", type=int, default=9092, help="the one port sites and the run API use")
    group = link.add_mutually_exclusive_group(required=True)
    group.add_argument("--certs-dir", help=f"PKI folder with {', '.join(TLS_FILES)} (retina-server pki init)")
    group.add_argument("--insecure", action="store_true", help="no TLS, no site authentication (loopback tests only)")
    run = commands.add_parser("run", help="launch a federated run and follow it")
    run.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    _security(run)
    run.add_argument("--resume", type=Path, help="continue this run folder from its last complete round")
    run.add_argument("--config-dir", type=Path, help="the consortium's own config groups, e.g. "
                     "DIR/experiment/NAME.yaml selected with +experiment=NAME")
    run.add_argument("--detach", action="store_true", help="on Ctrl-C / SIGTERM leave the run going on the "
                     "SuperLink (stop it later with retina-server stop) instead of stopping it")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. federation.rounds=5 strategy=fedprox")
    stop = commands.add_parser("stop", help="stop the run that owns a run folder")
    stop.add_argument("--run-dir", required=True, help="the run folder (its launch.lock names the run and SuperLink)")
    stop.add_argument("--superlink", help="HOST:PORT of the SuperLink (default: the one the run was launched on)")
    _security(stop)
    pki = commands.add_parser("pki", help="the federation's CA, SuperLink certificate and site keys")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_commands.add_parser("init", help="create the CA and the SuperLink's TLS certificate")
    init.add_argument("--dir", required=True, help="PKI folder (created; nothing in it is overwritten)")
    init.add_argument("--host", action="append", required=True,
                      help="a host name or IP address sites dial (repeat for several)")
    init.add_argument("--days", type=int, default=825, help="validity of the certificates")
    site = pki_commands.add_parser("add-site", help="create (or take) a site's key pair and register it")
    site.add_argument("name", help="the site's name")
    site.add_argument("--dir", required=True, help="PKI folder made by pki init")
    site.add_argument("--public-key", help="register this OpenSSH public key the site made itself instead")
    site.add_argument("--superlink", help="HOST:PORT of the running SuperLink to register the key with")
    status = commands.add_parser("status", help="connected sites, runs, and a run folder's progress")
    status.add_argument("--superlink", required=True)
    _security(status)
    status.add_argument("--run-dir", help="run folder to report the current round and last metrics of")
    args = parser.parse_args(argv)

    from server.flower_runtime import FlowerRunError
    from server.pki import PKIError
    from server.run_lock import RunFolderBusy
    from shared_model.cli.errors import user_errors

    with user_errors(FlowerRunError, PKIError, RunFolderBusy):
        if args.command == "superlink":
            _superlink(args)
        sys.exit({"run": _run, "stop": _stop, "status": _status, "pki": _pki}[args.command](args))


if __name__ == "__main__":
    main()
