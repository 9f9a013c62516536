"""``retina-sim``'s library side: run a whole federation on this machine with Flower's
simulation engine (Ray) — one virtual SuperNode per site, per-site CPU/GPU resources, optionally
on an existing Ray cluster — and print each round as it completes.

The run folder gets the resolved ``config.yaml``, the generated Flower app, a private
``FLWR_HOME`` (connection file, the local SuperLink's database and log), ``metrics.jsonl``,
``checkpoints/round_NNNN/``, ``sites/<site>/`` (each virtual site's trainer state),
``eval/`` and ``flower.log`` (everything the ServerApp and ClientApps printed).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared_model.config import FederationAppConfig
from shared_model.data.embedded import ensure_phantom
from shared_model.data.sites import simulated_site_manifests
from shared_model.train.centralized import write_resolved_config
from server.federation import METRICS_FILE, round_row
from server.flower_app import write_flower_app
from server.flower_runtime import (Connection, flower_env, free_port, local_superlink_pids, run_logs, stop_process,
                                   submit_run, wait_for_run, write_connections)

log = logging.getLogger(__name__)

CONNECTION = "local"


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
                                      site_manifests=[absolute(m) for m in cfg.federation.site_manifests]))


def _run_deadline(cfg: FederationAppConfig) -> float:
    fed = cfg.federation
    return fed.connect_timeout + fed.rounds * (fed.round_retries + 1) * 2 * fed.round_timeout + 600


def round_table(records: list[dict]) -> Table:
    """Rows of ``metrics.jsonl``: per-site losses, aggregate zero-shot ACA, time, bytes."""
    table = Table(title="federated rounds")
    for column in ("round", "site losses (image_text / image_image / mae)", "server zero-shot ACA",
                   "federated ACA", "time (s)", "MiB moved"):
        table.add_column(column)
    for r in records:
        losses = "\n".join(f"{name}: {m.get('loss.image_text', 0):.3f} / {m.get('loss.image_image', 0):.3f} / "
                           f"{m.get('loss.mae', 0):.3f}" for name, m in r["sites"].items())
        aca = "\n".join(f"{task}: {v['aca']:.3f}" for task, v in (r.get("server_eval") or {}).items()) or "–"
        fed = r.get("federated_eval", {}).get("zero-shot-aca")
        table.add_row(str(r["round"]), losses, aca, "–" if fed is None else f"{fed:.3f}", f"{r['seconds']:.1f}",
                      f"{(r['bytes_sent'] + r['bytes_received']) / 2 ** 20:.1f}")
    return table


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_simulation(cfg: FederationAppConfig, console: Console | None = None) -> list[dict]:
    """Simulate the federation ``cfg`` describes; returns the rounds' records (``metrics.jsonl``)."""
    console = console or Console()
    cfg = with_absolute_paths(cfg)
    run_dir = Path(cfg.run_dir)
    if cfg.phantom.ensure:
        ensure_phantom(cfg.phantom)
    sites = simulated_site_manifests(cfg)
    missing = [m for m in sites if not Path(m).is_file()]
    if missing:
        raise FileNotFoundError(f"site manifest(s) not found: {', '.join(missing)}")
    write_resolved_config(cfg, run_dir)
    app_dir = write_flower_app(run_dir / "retinafl-app", cfg)
    home = run_dir / "flwr-home"
    write_connections(home, [Connection(CONNECTION, ":local:")])
    extra = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    if cfg.federation.ray_address:
        extra["RAY_ADDRESS"] = cfg.federation.ray_address
    env = flower_env(home, extra)
    resources = {"num-supernodes": len(sites), "client-resources-num-cpus": cfg.federation.client_cpus,
                 "client-resources-num-gpus": float(cfg.federation.client_gpus)}
    console.print(f"simulating {len(sites)} sites x {cfg.federation.rounds} rounds ({cfg.strategy.name}); run folder {run_dir}")
    shown = len(read_metrics(run_dir))

    def show_new_rounds() -> None:
        nonlocal shown
        records = read_metrics(run_dir)
        for record in records[shown:]:
            console.print(round_row(record, record["seconds"]))
        shown = len(records)

    run_id = None
    try:
        run_id = submit_run(app_dir, CONNECTION, env, resources)
        wait_for_run(run_id, CONNECTION, env, _run_deadline(cfg), on_poll=show_new_rounds)
    finally:
        if run_id is not None:
            (run_dir / "flower.log").write_text(run_logs(run_id, CONNECTION, env))
        for pid in local_superlink_pids(home):
            stop_process(pid)
    show_new_rounds()
    records = read_metrics(run_dir)
    console.print(round_table(records))
    return records
