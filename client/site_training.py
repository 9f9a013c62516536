"""One site's work in a round, as plain library code the ClientApp calls: load the site's
manifests, start from the round's global weights, train ``train.steps`` local steps with the
foundation's :class:`LocalTrainer`, and return the updated exchanged weights with metrics; or
score the global weights zero-shot on the site's test split (federated evaluation).

The trainer's state (optimizer moments, schedule position, data order, RNG) is kept on the
site's disk after every round (``state_dir/trainer/round_NNNN``), so round r+1 continues where
round r stopped, even in a fresh process, and a coordinator that resumes round r+1 gets the
same update as an uninterrupted run.
"""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from shared_model.config import EvalConfig, EvalSetConfig, FederationAppConfig
from shared_model.data.manifest import expand_manifest_paths
from shared_model.eval.evaluate import evaluate_model
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.model.exchange import (app_version, exchanged_state_dict, exchanged_statistics,
                                         load_exchanged_state_dict, schema_digest)
from shared_model.privacy.session import DPSession
from shared_model.train.centralized import build_training_dataset, load_training_records
from shared_model.train.proximal import ProximalTerm
from shared_model.train.trainer import LocalTrainer, resolve_device, seed_everything

log = logging.getLogger(__name__)

KEEP_STATES = 2  # trainer states kept per site: the last round's and the one before


@dataclass(frozen=True)
class Site:
    """Where a site's data and state live; never sent to the coordinator."""

    name: str
    manifests: list[str]
    state_dir: Path
    device: str = "auto"


class SchemaMismatchError(RuntimeError):
    """The coordinator runs another model schema or app version than this site."""


@dataclass(frozen=True)
class Expected:
    """What the coordinator announced with the round: its model schema digest and app version."""

    schema: str | None = None
    version: str | None = None

    def check(self, site: str, model: torch.nn.Module) -> None:
        """Raise :class:`SchemaMismatchError` unless this site's model and version match."""
        from flwr.app import ArrayRecord

        problems = []
        if self.version is not None and self.version != app_version():
            problems.append(f"app version: coordinator {self.version}, site {app_version()}")
        if self.schema is not None and self.schema != schema_digest(ArrayRecord(exchanged_state_dict(model))):
            problems.append("model schema (exchanged tensor names, shapes or dtypes) differs from the coordinator's")
        if problems:
            raise SchemaMismatchError(f"site {site} cannot take part: " + "; ".join(problems)
                                      + ". Install the coordinator's RetinaFL version at this site.")


def site_seed(seed: int, site: str, server_round: int) -> int:
    """Seed of a site's first round: distinct per (run seed, site), stable across processes."""
    return int(np.random.SeedSequence([seed, zlib.crc32(site.encode()), server_round]).generate_state(1)[0])


def _state_folder(site: Site, server_round: int) -> Path:
    return site.state_dir / "trainer" / f"round_{server_round:04d}"


def _prune_states(site: Site) -> None:
    folders = sorted((site.state_dir / "trainer").glob("round_*"))
    for old in folders[:-KEEP_STATES]:
        shutil.rmtree(old, ignore_errors=True)


TRAINED_MARKERS = ("trainer", "generator")  # folders in a site's state dir that show it has trained


def open_privacy(app: FederationAppConfig, site: Site, model: torch.nn.Module, records: list,
                 total_steps: int) -> DPSession | None:
    """The DP-SGD session of this site's round, or None without DP. A site whose state shows
    earlier training must have its ledger (LedgerError otherwise)."""
    if app.privacy.mode != "dp-sgd":
        return None
    trained = any((site.state_dir / marker).is_dir() for marker in TRAINED_MARKERS)
    return DPSession.open(site.state_dir, app.privacy, model, records, app.train.batch_size, total_steps, trained)


def budget_stop(model: torch.nn.Module, session: DPSession, server_round: int) -> "RoundResult":
    """The reply of a site whose next round would pass its ε budget: no steps, its ε so far."""
    spent = session.ledger.spent()
    metrics = {"num-examples": 0, "site-weight": 0.0, "server-round": server_round, "steps": 0,
               "privacy-budget-exhausted": 1, "epsilon": spent}
    return RoundResult.of(model, metrics, session.describe())


@dataclass
class RoundResult:
    """A site's reply to a training round: weights, metrics, and the DP settings it trained under."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    privacy: dict[str, str | float | int]  # {"mode": "none"} or the DP plan and ε so far
    statistics: frozenset[str] = frozenset()  # the names in ``state`` that are running statistics

    @classmethod
    def of(cls, model: torch.nn.Module, metrics: dict[str, float],
           privacy: dict[str, str | float | int]) -> "RoundResult":
        """The reply carrying ``model``'s exchanged state."""
        return cls(exchanged_state_dict(model), metrics, privacy, exchanged_statistics(model))


def train_round(app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor], server_round: int,
                proximal_mu: float = 0.0, progress: bool = False, expected: Expected = Expected()) -> RoundResult:
    """Train ``app.train.steps`` local steps from ``global_state``; returns the new exchanged
    state_dict and the round's metrics (``num-examples`` weights the aggregation).

    Under ``privacy.mode=dp-sgd`` the steps are DP-SGD steps accounted in the site's ledger; a
    site whose next round would pass ``privacy.epsilon_budget`` trains 0 steps and says so
    (``privacy-budget-exhausted``, ``num-examples`` 0), and one whose ledger is missing or
    damaged refuses with :class:`~shared_model.privacy.ledger.LedgerError`.
    """
    records = load_training_records(replace(app.data, manifests=list(site.manifests)))
    device = resolve_device(site.device)
    model = build_model(app.model)
    expected.check(site.name, model)
    load_exchanged_state_dict(model, global_state)
    objective = EyeCLIPObjective(app.loss, app.model.mae.norm_pix_loss)
    dataset = build_training_dataset(records, app, site.name)
    proximal = ProximalTerm(model, proximal_mu) if proximal_mu > 0 else None
    total_steps = app.federation.rounds * app.train.steps
    session = open_privacy(app, site, model, records, total_steps)
    if session is not None:
        if not session.allows(app.train.steps):
            return budget_stop(model, session, server_round)
        session.prepare(app.model.image.image_size, device)
        trainer = session.trainer(objective, app.train, device, total_steps, app.data.num_workers, proximal)
    else:
        trainer = LocalTrainer(model, objective, app.train, device, total_steps=total_steps,
                               num_workers=app.data.num_workers, proximal=proximal)
    previous = _state_folder(site, server_round - 1)
    if (previous / "trainer_state.pt").is_file():
        trainer.load_state(previous)
    else:
        if server_round > 1:
            log.warning("site %s: no trainer state of round %d in %s; starting a fresh optimizer",
                        site.name, server_round - 1, site.state_dir)
        seed_everything(site_seed(app.train.seed, site.name, server_round))
    stats = trainer.run(dataset, app.train.steps, progress=progress, label=f"{site.name} round {server_round}")
    privacy: dict[str, str | float | int] = {"mode": "none"}
    metrics = {"num-examples": len(records), "site-weight": 1.0, "server-round": server_round, "steps": stats.steps,
               "images": stats.images, "seconds": round(stats.seconds, 3), "skipped-images": len(stats.skipped)}
    if session is not None:
        # The ledger is written before the update leaves: a crash in between over-counts, never under-counts.
        metrics["epsilon"] = session.record(stats.steps, {"round": server_round})
        privacy = session.describe()
        # Losses and the number of sampled images are computed on the records without noise: not sent.
        del metrics["images"]
    else:
        # Only the terms computed in this round (each a mean over the steps that computed it): a CNN
        # tower has no MAE term, a site without a second modality no cross-modality pairs.
        metrics.update({f"loss.{name}": float(value) for name, value in stats.losses.items()})
        metrics.update({"anchors": stats.anchors, "paired-anchors": stats.paired})
    trainer.save_state(_state_folder(site, server_round))
    _prune_states(site)
    return RoundResult.of(model, metrics, privacy)


def evaluate_round(app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                   server_round: int, expected: Expected = Expected()) -> dict[str, float]:
    """Zero-shot ACA of the global weights on the site's ``test`` split (prompt ensembles, the
    common evaluator); ``num-examples`` 0 when the site has no test rows."""
    start = time.perf_counter()
    device = resolve_device(site.device)
    model = build_model(app.model)
    expected.check(site.name, model)
    load_exchanged_state_dict(model, global_state)
    model.to(device)
    sets = [EvalSetConfig(name=f"{site.name}-{i}", path=str(path), split="test")
            for i, path in enumerate(expand_manifest_paths(site.manifests))]
    results = evaluate_model(model, EvalConfig(sets=sets, linear_probe=False, kshot=[], retrieval=False),
                             app.model.image.image_size, device)
    tasks = results.get("zero_shot", {})
    n = sum(task["n"] for task in tasks.values())
    aca = sum(task["aca"] * task["n"] for task in tasks.values()) / n if n else 0.0
    return {"num-examples": n, "server-round": server_round, "zero-shot-aca": aca,
            "seconds": round(time.perf_counter() - start, 3)}
