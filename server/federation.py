"""A whole federated run at the coordinator, given a Flower Grid and the typed config: check the
config, build the task's model and the aggregation, resume from the last complete round when
asked, run the rounds, and after each one evaluate the aggregate with the common evaluator (as
the task does), checkpoint it, append a ``metrics.jsonl`` line and print the round's row."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from rich.console import Console

from server.aggregation import Aggregation
from server.central_dp import CentralAccountant
from server.compatibility import check_federation
from server.privacy_report import write_privacy_report
from server.round_checkpoint import (
    KEEP_ROUNDS,
    ServerState,
    latest_round,
    load_strategy_state,
    remove_partial_rounds,
    save_round,
    update_round_state,
)
from server.round_log import history_record, round_row, sync_metrics, zero_shot_summary
from server.rounds import RoundReport, run_rounds
from server.run_lock import RunLock
from shared_model import wire
from shared_model.config import FederationAppConfig
from shared_model.eval.report import write_report
from shared_model.federated.task import task_for
from shared_model.model.checkpoint import WEIGHTS, load_weights, weights_nbytes
from shared_model.model.exchange import app_version, exchanged_state_dict, load_exchanged_state_dict, schema_digest
from shared_model.reporting.metrics_log import METRICS_FILE, MetricsLog
from shared_model.reporting.run_report import refresh_report
from shared_model.run_folder import check_run_folder
from shared_model.runtime import resolve_device, seed_everything

log = logging.getLogger(__name__)


def _privacy_state(cfg: FederationAppConfig) -> dict:
    """The privacy part of the server state: settings, the central accountant, one entry per round."""
    return {"mode": cfg.privacy.mode, "unit": cfg.privacy.unit, "secagg": cfg.secagg.enabled,
            "transport": cfg.federation.transport, "central": {"mode": cfg.privacy.central}, "rounds": []}


def run_federation(grid: Grid, cfg: FederationAppConfig, console: Console | None = None,
                   run_id: int | None = None) -> ServerState:
    """Run (or resume) the federated training described by ``cfg`` over ``grid``, holding the
    run folder for run ``run_id`` (a second live run on it stops here, before writing)."""
    with RunLock(Path(cfg.run_dir), run_id):
        return FederatedRun(grid, cfg, console or Console()).run()


class FederatedRun:
    """One run's task, model, aggregation, server state and logs, and what happens after each round."""

    def __init__(self, grid: Grid, cfg: FederationAppConfig, console: Console):
        self.grid, self.console = grid, console
        self.cfg = cfg = check_federation(cfg)
        self.run_dir = Path(cfg.run_dir)
        remove_partial_rounds(self.run_dir)
        seed_everything(cfg.train.seed)
        self.device = resolve_device(cfg.train.device)
        self.task = task_for(cfg.task)
        self.model = self.task.build_model(cfg)
        # The kept rounds and the one being written, each with weights and up to two optimizer moments.
        check_run_folder(self.run_dir, (KEEP_ROUNDS + 1) * 3 * weights_nbytes(self.model))
        self.aggregation = Aggregation(cfg)
        self.state = ServerState(0, [], cfg.strategy.name, {**_privacy_state(cfg),
                                                            "model_fixes": getattr(self.model, "dp_fixes", [])})
        self._resume()
        self.accountant = None
        if cfg.privacy.central != "none":
            self.accountant = CentralAccountant(cfg.privacy, cfg.federation,
                                                self.state.privacy["central"].get("accountant"))
            if cfg.privacy.central == "adaptive" and "clipping_norm" in self.state.privacy["central"]:  # resumed
                self.aggregation.central_clipping_norm = self.state.privacy["central"]["clipping_norm"]
        self.model.to(self.device)
        self.last_results: dict = {}  # the common evaluator's last results (for eval/)
        self.server_eval: dict = {}  # this round's zero-shot summary (empty: not evaluated)
        self.metrics = MetricsLog(self.run_dir, cfg.report.tensorboard)

    def _resume(self) -> None:
        found = latest_round(self.run_dir)
        if found is None:
            return
        if not self.cfg.resume:
            raise ValueError(f"{self.run_dir} already holds round checkpoints (up to {found[0].name}); "
                             "pass resume=true to continue that run, or choose another run_dir")
        folder, self.state = found
        if self.state.strategy != self.cfg.strategy.name:
            raise ValueError(f"{folder}: written by strategy {self.state.strategy!r}, config asks for "
                             f"{self.cfg.strategy.name!r}")
        load_weights(self.model, folder / WEIGHTS)
        self.aggregation.restore(load_strategy_state(folder))
        sync_metrics(self.run_dir / METRICS_FILE, self.state.history)
        self.console.print(f"resuming {self.run_dir} after round {self.state.round}")

    def run(self) -> ServerState:
        """The remaining rounds, then the last evaluation's report and the run's report page."""
        arrays = ArrayRecord(exchanged_state_dict(self.model))
        # Sites check these before training: another model schema or app version gets an error reply.
        train_config = ConfigRecord({wire.MODEL_SCHEMA: schema_digest(arrays), wire.APP_VERSION: app_version()})
        run_rounds(self.grid, self.aggregation, arrays, self.state.round + 1, self.cfg.federation, self.cfg.train.seed,
                   self.after_training, self.after_evaluation,
                   federated_eval=self.cfg.strategy.fraction_evaluate > 0 and self.task.federated_evaluation,
                   train_config=train_config)
        if self.last_results:
            write_report({**self.last_results, "meta": {"round": self.state.round, "strategy": self.cfg.strategy.name,
                                                        "config": asdict(self.cfg.federation)}},
                         self.run_dir / "eval",
                         f"RetinaFL {self.cfg.model.name} — {self.cfg.strategy.name}, round {self.state.round}")
        self.metrics.close()
        if self.cfg.report.html:
            refresh_report(self.run_dir)
        return self.state

    def _evaluate(self, report: RoundReport) -> None:
        """The common evaluator on the aggregate, every ``federation.evaluate_every`` rounds and last."""
        fed = self.cfg.federation
        self.server_eval.clear()
        due = report.round == fed.rounds or (fed.evaluate_every > 0 and report.round % fed.evaluate_every == 0)
        if not (due and self.cfg.eval.sets):
            return
        start = time.perf_counter()
        results = self.task.evaluate(self.model, self.cfg, self.device)
        if results:
            self.last_results = results
            self.server_eval.update(zero_shot_summary(results))
        report.seconds += time.perf_counter() - start

    def after_training(self, aggregate: ArrayRecord, report: RoundReport) -> None:
        """Evaluate and checkpoint the round's aggregate at once: whatever happens during
        federated evaluation, this round is not lost."""
        load_exchanged_state_dict(self.model, aggregate.to_torch_state_dict())
        self._evaluate(report)
        state = self.state
        state.round = report.round
        state.history.append(history_record(report, dict(self.server_eval) or None))
        privacy_round = {"round": report.round, "sites": report.site_privacy, "secagg": report.secagg}
        if self.accountant is not None:
            privacy_round.update(central_sites=len(report.sites),
                                 central_epsilon=self.accountant.release(len(report.sites)))
            state.privacy["central"].update(accountant=self.accountant.state_dict(),
                                            epsilon=self.accountant.epsilon(), delta=self.accountant.delta,
                                            clipping_norm=self.aggregation.central_clipping_norm)
        state.privacy["rounds"].append(privacy_round)
        self.grid.get_node_ids()  # raises if the run was stopped meanwhile: a stopped run writes no further round
        try:
            save_round(self.run_dir, lambda folder, r: self.task.write_model(self.model, self.cfg, folder, r,
                                                                             state.privacy),
                       self.aggregation.state(), state)  # weights copied to CPU there
            write_privacy_report(self.run_dir, self.cfg, state.privacy)
        except OSError as exc:
            raise OSError(f"round {report.round} could not be written to {self.run_dir} ({exc}); the run folder "
                          "keeps the rounds before it") from exc

    def after_evaluation(self, report: RoundReport) -> None:
        """The round's record with its federated evaluation: checkpointed, logged, printed."""
        record = history_record(report, dict(self.server_eval) or None)
        if record != self.state.history[-1]:
            self.state.history[-1] = record
            update_round_state(self.run_dir, self.state)
        timings = {"seconds": report.seconds,
                   "site_seconds": {n: m.get(wire.SECONDS) for n, m in report.sites.items()}}
        central = {"central_epsilon": self.state.privacy["rounds"][-1].get("central_epsilon")} \
            if self.accountant is not None else {}
        self.metrics.append({**record, **timings, **central})
        self.console.print(round_row(record, report.seconds))
        if self.cfg.report.html:
            refresh_report(self.run_dir)
