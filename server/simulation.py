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

import shlex
from pathlib import Path

from rich.console import Console

from server.flower_runtime import LOCAL_ADDRESS, Connection, free_port, local_superlink_pids, stop_process_tree
from server.launch import Launch, launch_run, with_absolute_paths
from shared_model.config import FederationAppConfig
from shared_model.data.embedded import ensure_phantom
from shared_model.data.sites import simulated_site_manifests

CONNECTION = "local"


def _stop_local_superlink(home: Path, interrupted: bool) -> None:
    """Stop the local SuperLink and everything under it (SuperExec, ``flwr-simulation``, Ray):
    gracefully after the run, frozen and killed at once after an interrupt, so nothing writes
    to the run folder after the user stopped it."""
    stop_process_tree(local_superlink_pids(home), at_once=interrupted)


def resume_command(argv: list[str]) -> str:
    """The ``retina-sim`` command line that continues this run folder (the same overrides, resume=true)."""
    return shlex.join(["retina-sim", *[a for a in argv if not a.startswith("resume=")], "resume=true"])


def _check_quorum(cfg: FederationAppConfig, sites: int) -> None:
    fed = cfg.federation
    if max(fed.min_available, fed.min_sites) > sites:
        raise ValueError(f"federation.min_available={fed.min_available} / federation.min_sites={fed.min_sites}: the "
                         f"simulation has only {sites} sites, so no round could ever start")


def run_simulation(cfg: FederationAppConfig, console: Console | None = None,
                   argv: list[str] | None = None) -> list[dict]:
    """Simulate the federation ``cfg`` describes; returns the rounds' records (``metrics.jsonl``).
    ``argv``: the command's overrides (the resume command printed after a stop repeats them)."""
    console = console or Console()
    cfg = with_absolute_paths(cfg)
    if cfg.phantom.ensure:
        ensure_phantom(cfg.phantom)
    sites = simulated_site_manifests(cfg)
    missing = [m for site in sites for m in site if not Path(m).is_file()]
    if missing:
        raise FileNotFoundError(f"site manifest(s) not found: {', '.join(missing)}")
    _check_quorum(cfg, len(sites))
    extra = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    if cfg.federation.ray_address:
        extra["RAY_ADDRESS"] = cfg.federation.ray_address
    resources = {"num-supernodes": len(sites), "client-resources-num-cpus": cfg.federation.client_cpus,
                 "client-resources-num-gpus": float(cfg.federation.client_gpus)}
    if cfg.federation.ray_cpus is not None:
        resources["init-args-num-cpus"] = cfg.federation.ray_cpus
    console.print(f"simulating {len(sites)} sites x {cfg.federation.rounds} rounds ({cfg.strategy.name})")
    overrides = [a for a in argv or [] if not a.startswith("run_dir=")]
    launch = Launch(Connection(CONNECTION, LOCAL_ADDRESS), resume_command([f"run_dir={cfg.run_dir}", *overrides]),
                    extra, resources, stop_local=_stop_local_superlink)
    return launch_run(cfg, launch, console)
