"""Launching a federated run on a SuperLink and following it: write the run folder (resolved
``config.yaml``, the generated Flower app, a private ``FLWR_HOME`` with the connection), submit
the run, print each round as its ``metrics.jsonl`` line appears, wait for Flower's final status,
keep the run's log in ``flower.log``. Used by ``retina-sim`` (local simulation SuperLink) and
``retina-server run`` (a deployed SuperLink)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared_model.config import FederationAppConfig
from shared_model.privacy.plan import resolve_privacy
from shared_model.reporting.metrics_log import read_metrics
from shared_model.train.centralized import write_resolved_config
from server.federation import round_row, sites_summary
from server.flower_app import write_flower_app
from shared_model.offline_env import offline_env
from server.flower_runtime import Connection, run_logs, submit_run, wait_for_run, write_connections


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
    fed = cfg.federation
    return fed.connect_timeout + fed.rounds * (fed.round_retries + 1) * 2 * fed.round_timeout + 600


def round_table(records: list[dict]) -> Table:
    """Rows of ``metrics.jsonl``: each site's loss (ε under DP-SGD, where losses are not sent),
    the aggregate's zero-shot ACA at the server and at the sites, time, bytes."""
    label = sites_summary(records[-1])[0] if records else "loss"
    sites = " / ".join(records[-1]["sites"]) if records else ""
    table = Table(title="federated rounds")
    for column in ("round", f"{label}: {sites}", "zero-shot ACA", "at sites", "s", "MiB"):
        table.add_column(column)
    for r in records:
        evals = r.get("server_eval") or {}
        aca = "\n".join(f"{v['aca']:.3f}" if len(evals) == 1 else f"{task} {v['aca']:.3f}" for task, v in evals.items())
        fed = r.get("federated_eval", {}).get("zero-shot-aca")
        table.add_row(str(r["round"]), sites_summary(r)[1], aca or "–", "–" if fed is None else f"{fed:.3f}",
                      f"{r['seconds']:.0f}", f"{(r['bytes_sent'] + r['bytes_received']) / 2 ** 20:.0f}")
    last = (records[-1].get("server_eval") or {}) if records else {}
    if len(last) == 1:
        table.caption = f"zero-shot ACA on {next(iter(last))}"
    return table


def launch_run(cfg: FederationAppConfig, connection: Connection, env_extra: dict[str, str] | None = None,
               federation_config: dict | None = None, console: Console | None = None,
               after: Callable[[Path], None] | None = None) -> list[dict]:
    """Write the run folder (resolved config, Flower app, FLWR_HOME), submit the run to
    ``connection``, print rounds as they complete, wait for the final status, save the run's
    log to ``flower.log``; ``after()`` runs last, also on failure (e.g. stopping a local
    SuperLink). Returns the rounds' records."""
    console = console or Console()
    transport = ("simulation (one machine, no network)" if connection.address == ":local:"
                 else "insecure (no TLS)" if connection.insecure else "TLS")
    cfg = resolve_privacy(replace(cfg, federation=replace(cfg.federation, transport=transport)))
    run_dir = Path(cfg.run_dir)
    write_resolved_config(cfg, run_dir)
    app_dir = write_flower_app(run_dir / "retinafl-app", cfg)
    home = run_dir / "flwr-home"
    write_connections(home, [connection])
    env = offline_env(home, env_extra)
    shown = len(read_metrics(run_dir))

    def show_new_rounds() -> None:
        nonlocal shown
        records = read_metrics(run_dir)
        for record in records[shown:]:
            console.print(round_row(record, record["seconds"]))
        shown = len(records)

    run_id = None
    try:
        run_id = submit_run(app_dir, connection.name, env, federation_config)
        console.print(f"run {run_id} submitted to {connection.address}; run folder {run_dir}")
        wait_for_run(run_id, connection, env, _run_deadline(cfg), on_poll=show_new_rounds)
    finally:
        if run_id is not None:
            (run_dir / "flower.log").write_text(run_logs(run_id, connection.name, env))
        if after is not None:
            after(home)
    show_new_rounds()
    records = read_metrics(run_dir)
    console.print(round_table(records))
    return records
