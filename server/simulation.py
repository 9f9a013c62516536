"""``retina-sim``'s library side: run a whole federation on this machine with Flower's
simulation engine (Ray) — one virtual SuperNode per site, per-site CPU/GPU resources, optionally
on an existing Ray cluster (``federation.ray_address``) — through a local SuperLink that is
stopped when the run ends.

The run folder gets the resolved ``config.yaml``, the generated Flower app, a private
``FLWR_HOME`` (connection file, the local SuperLink's database and log), ``metrics.jsonl``,
``checkpoints/round_NNNN/``, ``sites/<site>/`` (each virtual site's trainer state), ``eval/``
and ``flower.log`` (everything the ServerApp and ClientApps printed).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from shared_model.config import FederationAppConfig
from shared_model.data.embedded import ensure_phantom
from shared_model.data.sites import simulated_site_manifests
from server.flower_runtime import Connection, free_port, local_superlink_pids, stop_process
from server.launch import launch_run, with_absolute_paths

CONNECTION = "local"


def _stop_local_superlink(home: Path) -> None:
    for pid in local_superlink_pids(home):
        stop_process(pid)


def run_simulation(cfg: FederationAppConfig, console: Console | None = None) -> list[dict]:
    """Simulate the federation ``cfg`` describes; returns the rounds' records (``metrics.jsonl``)."""
    console = console or Console()
    cfg = with_absolute_paths(cfg)
    if cfg.phantom.ensure:
        ensure_phantom(cfg.phantom)
    sites = simulated_site_manifests(cfg)
    missing = [m for site in sites for m in site if not Path(m).is_file()]
    if missing:
        raise FileNotFoundError(f"site manifest(s) not found: {', '.join(missing)}")
    extra = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    if cfg.federation.ray_address:
        extra["RAY_ADDRESS"] = cfg.federation.ray_address
    resources = {"num-supernodes": len(sites), "client-resources-num-cpus": cfg.federation.client_cpus,
                 "client-resources-num-gpus": float(cfg.federation.client_gpus)}
    if cfg.federation.ray_cpus is not None:
        resources["init-args-num-cpus"] = cfg.federation.ray_cpus
    console.print(f"simulating {len(sites)} sites x {cfg.federation.rounds} rounds ({cfg.strategy.name})")
    return launch_run(cfg, Connection(CONNECTION, ":local:"), extra, resources, console, after=_stop_local_superlink)
