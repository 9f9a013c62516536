"""A whole federated run at the coordinator, given a Flower Grid and the typed config: build
the model and strategy, resume from the last complete round when asked, run the rounds, and
after each one evaluate the aggregate with the common evaluator, checkpoint it, append a
``metrics.jsonl`` line and print the round's row."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from rich.console import Console

from shared_model.atomic_files import write_text_atomic
from shared_model.config import FederationAppConfig
from shared_model.eval.evaluate import evaluate_model
from shared_model.eval.report import write_report
from shared_model.model import build_model
from shared_model.model.checkpoint import WEIGHTS, load_weights, weights_nbytes
from shared_model.model.exchange import app_version, exchanged_state_dict, load_exchanged_state_dict, schema_digest
from shared_model.privacy.plan import resolve_privacy
from shared_model.reporting.metrics_log import METRICS_FILE, MetricsLog
from shared_model.reporting.run_report import refresh_report
from shared_model.run_folder import check_run_folder
from shared_model.train.trainer import resolve_device, seed_everything
from server.central_dp import SITE_WEIGHT_KEY, CentralAccountant, wrap_central_dp
from server.privacy_report import write_privacy_report
from server.round_checkpoint import (KEEP_ROUNDS, ServerState, clip_writer, latest_round, load_strategy_state,
                                     remove_partial_rounds, save_round, update_round_state)
from server.rounds import RoundReport, run_rounds
from server.run_lock import RunLock
from server.strategy_registry import build_strategy, restore_strategy_state, strategy_state

log = logging.getLogger(__name__)

# Reply metrics that measure time, not the model: kept in metrics.jsonl, left out of the history
# stored in checkpoints, so a resumed run's history equals an uninterrupted one's.
TIMING_KEYS = ("seconds",)


def _deterministic(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def zero_shot_summary(results: dict) -> dict:
    """``{task: {"aca": .., "auc": ..}}`` from the common evaluator's results."""
    return {task: {"aca": m["aca"], "auc": m.get("auc")} for task, m in results.get("zero_shot", {}).items()}


def history_record(report: RoundReport, server_eval: dict | None) -> dict:
    """The round's deterministic record (what a resumed run must reproduce exactly)."""
    return {"round": report.round,
            "sites": {name: _deterministic(m) for name, m in report.sites.items()},
            "train": _deterministic(report.train_metrics),
            "federated_eval": _deterministic(report.evaluate_metrics),
            "site_eval": {name: _deterministic(m) for name, m in report.site_evaluations.items()},
            "server_eval": server_eval,
            "rejected": list(report.rejected), "attempts": report.attempts,
            **({"evaluation_skipped": report.evaluation_skipped} if report.evaluation_skipped else {}),
            "bytes_sent": report.bytes_sent, "bytes_received": report.bytes_received}


def site_summary(metrics: dict) -> str:
    """A site's round in a few characters: its total loss, or its ε under DP-SGD (no losses are
    sent); the terms are in metrics.jsonl and report.html."""
    if "epsilon" in metrics:
        return f"{metrics['epsilon']:.3g}"
    return f"{metrics['loss.total']:.3f}" if "loss.total" in metrics else "–"


def sites_summary(record: dict) -> tuple[str, str]:
    """What the sites' figures are ("loss", or "ε" under DP-SGD) and every site's
    :func:`site_summary` in site order, e.g. ``("loss", "3.434 / 3.464 / 3.409")``."""
    label = "ε" if any("epsilon" in m for m in record["sites"].values()) else "loss"
    return label, " / ".join(site_summary(m) for m in record["sites"].values())


CONSOLE_WIDTH = 80  # a round's line is broken between fields, never inside one, to fit


def round_row(record: dict, seconds: float | None) -> str:
    """A round as the console prints it: each site's loss (ε under DP-SGD), the aggregate's
    zero-shot ACA per task (named by modality alone when there is one set), time, bytes moved;
    on one line when it fits :data:`CONSOLE_WIDTH`, else continued on indented lines, broken
    between fields (many sites or eval sets)."""
    evals = record["server_eval"] or {}
    one_set = len({task.split("/")[0] for task in evals}) == 1
    aca = [f"{task.split('/')[-1] if one_set else task} {v['aca']:.3f}" for task, v in evals.items()]
    moved = (record["bytes_sent"] + record["bytes_received"]) / 2 ** 20
    label, sites = sites_summary(record)
    took = "–" if seconds is None else f"{seconds:.0f}"
    shown = ["ACA " + aca[0], *aca[1:]] if aca else ["not evaluated"]
    fields = [f"round {record['round']}", f"{label} {sites}", *shown, f"{took} s", f"{moved:.0f} MiB"]
    lines = [fields[0]]
    for part in fields[1:]:
        if len(lines[-1]) + 2 + len(part) <= CONSOLE_WIDTH:
            lines[-1] += "  " + part
        else:
            lines.append("    " + part)
    return "\n".join(lines)


def _sync_metrics(path: Path, history: list[dict]) -> None:
    """Make ``metrics.jsonl`` hold exactly the rounds of the checkpoint a run resumes from: later
    rounds are run again and logged again; a checkpointed round whose line was never written
    (the run ended during its federated evaluation) is logged from the checkpoint, untimed."""
    last_round = history[-1]["round"] if history else 0
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    kept = [line for line in lines if json.loads(line)["round"] <= last_round]
    logged = {json.loads(line)["round"] for line in kept}
    kept += [json.dumps({**record, "seconds": None}) for record in history if record["round"] not in logged]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _privacy_state(cfg: FederationAppConfig) -> dict:
    """The privacy part of the server state: settings, the central accountant, one entry per round."""
    return {"mode": cfg.privacy.mode, "unit": cfg.privacy.unit, "secagg": cfg.secagg.enabled,
            "transport": cfg.federation.transport, "central": {"mode": cfg.privacy.central}, "rounds": []}


def _task_model(cfg: FederationAppConfig):
    """The model the federation trains: the foundation model or the synthetic-corpus generator."""
    if cfg.task == "clip":
        return build_model(cfg.model)
    if cfg.task == "generator":
        from synthetic.generator import federated_generator

        return federated_generator(cfg.generator, cfg.privacy.mode == "dp-sgd")
    raise ValueError(f"task must be 'clip' or 'generator', got {cfg.task!r}")


def worst_site_privacy(privacy: dict) -> dict:
    """The latest round's DP record of the site with the largest ε (what a shared generator's card states)."""
    sites = [s for s in (privacy["rounds"][-1]["sites"].values() if privacy["rounds"] else []) if "epsilon" in s]
    return max(sites, key=lambda s: s["epsilon"]) if sites else {"mode": "none"}


def run_federation(grid: Grid, cfg: FederationAppConfig, console: Console | None = None,
                   run_id: int | None = None) -> ServerState:
    """Run (or resume) the federated training described by ``cfg`` over ``grid``, holding the
    run folder for run ``run_id`` (a second live run on it stops here, before writing)."""
    with RunLock(Path(cfg.run_dir), run_id):
        return _federate(grid, cfg, console or Console())


def _federate(grid: Grid, cfg: FederationAppConfig, console: Console) -> ServerState:
    cfg = resolve_privacy(cfg)
    run_dir = Path(cfg.run_dir)
    remove_partial_rounds(run_dir)
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    model = _task_model(cfg)
    # The kept rounds and the one being written, each with weights and up to two optimizer moments.
    check_run_folder(run_dir, (KEEP_ROUNDS + 1) * 3 * weights_nbytes(model))
    central = cfg.privacy.central != "none"
    strategy = build_strategy(cfg.strategy, cfg.federation, SITE_WEIGHT_KEY if central else "num-examples")
    state = ServerState(0, [], cfg.strategy.name, {**_privacy_state(cfg), "model_fixes": getattr(model, "dp_fixes", [])})
    found = latest_round(run_dir)
    if found is not None and not cfg.resume:
        raise ValueError(f"{run_dir} already holds round checkpoints (up to {found[0].name}); "
                         "pass resume=true to continue that run, or choose another run_dir")
    if found is not None:
        folder, state = found
        if state.strategy != cfg.strategy.name:
            raise ValueError(f"{folder}: written by strategy {state.strategy!r}, config asks for {cfg.strategy.name!r}")
        load_weights(model, folder / WEIGHTS)
        restore_strategy_state(strategy, load_strategy_state(folder))
        _sync_metrics(run_dir / METRICS_FILE, state.history)
        console.print(f"resuming {run_dir} after round {state.round}")
    accountant = None
    if central:
        accountant = CentralAccountant(cfg.privacy, cfg.federation, state.privacy["central"].get("accountant"))
        strategy = wrap_central_dp(strategy, cfg.privacy, cfg.federation)
    arrays = ArrayRecord(exchanged_state_dict(model))
    # Sites check these before training: another model schema or app version gets an error reply.
    train_config = ConfigRecord({"model-schema": schema_digest(arrays), "app-version": app_version()})
    model.to(device)
    last_results: dict = {}
    server_eval: dict = {}  # this round's zero-shot summary (empty: not evaluated)
    metrics = MetricsLog(run_dir, cfg.report.tensorboard)

    def write_model(folder: Path, server_round: int) -> list[str]:
        # The foundation model as a regular checkpoint (retina-eval reads it); the generator as a
        # generator folder (retina-synth sample reads it) carrying the worst site's ε.
        if cfg.task == "clip":
            return clip_writer(model, cfg.model)(folder, server_round)
        from synthetic.generator import save_generator

        return save_generator(model, None, folder, {"round": server_round, "privacy": worst_site_privacy(state.privacy)})

    def after_training(aggregate: ArrayRecord, report: RoundReport) -> None:
        # Kept at once: whatever happens during federated evaluation, this round is not lost.
        load_exchanged_state_dict(model, aggregate.to_torch_state_dict())
        due = report.round == cfg.federation.rounds or (
            cfg.federation.evaluate_every > 0 and report.round % cfg.federation.evaluate_every == 0)
        server_eval.clear()
        if due and cfg.eval.sets and cfg.task == "clip":
            start = time.perf_counter()
            last_results.clear()
            last_results.update(evaluate_model(model, cfg.eval, cfg.model.image.image_size, device))
            server_eval.update(zero_shot_summary(last_results))
            report.seconds += time.perf_counter() - start
        state.round = report.round
        state.history.append(history_record(report, dict(server_eval) or None))
        privacy_round = {"round": report.round, "sites": report.site_privacy, "secagg": report.secagg}
        if accountant is not None:
            privacy_round.update(central_sites=len(report.sites), central_epsilon=accountant.release(len(report.sites)))
            state.privacy["central"].update(accountant=accountant.state_dict(), epsilon=accountant.epsilon(),
                                            delta=accountant.delta)
        state.privacy["rounds"].append(privacy_round)
        grid.get_node_ids()  # raises if the run was stopped meanwhile: a stopped run writes no further round
        try:
            save_round(run_dir, write_model, strategy_state(strategy), state)  # weights copied to CPU there
            write_privacy_report(run_dir, cfg, state.privacy)
        except OSError as exc:
            raise OSError(f"round {report.round} could not be written to {run_dir} ({exc}); the run folder keeps "
                          "the rounds before it") from exc

    def after_evaluation(report: RoundReport) -> None:
        record = history_record(report, dict(server_eval) or None)
        if record != state.history[-1]:
            state.history[-1] = record
            update_round_state(run_dir, state)
        timings = {"seconds": report.seconds, "site_seconds": {n: m.get("seconds") for n, m in report.sites.items()}}
        central = state.privacy["rounds"][-1].get("central_epsilon")
        metrics.append({**record, **timings, **({"central_epsilon": central} if accountant is not None else {})})
        console.print(round_row(record, report.seconds))
        if cfg.report.html:
            refresh_report(run_dir)

    run_rounds(grid, strategy, arrays, state.round + 1, cfg.federation, cfg.train.seed, after_training,
               after_evaluation, federated_eval=cfg.strategy.fraction_evaluate > 0 and cfg.task == "clip",
               secagg=cfg.secagg, train_config=train_config)
    if last_results:
        write_report({**last_results, "meta": {"round": state.round, "strategy": cfg.strategy.name,
                                               "config": asdict(cfg.federation)}},
                     run_dir / "eval", f"RetinaFL {cfg.model.name} — {cfg.strategy.name}, round {state.round}")
    metrics.close()
    if cfg.report.html:
        refresh_report(run_dir)
    return state
