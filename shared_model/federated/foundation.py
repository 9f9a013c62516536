"""The foundation model's federated task (``task=foundation``): the CLIP+MAE model of
:mod:`shared_model.model`, trained at each site with the foundation's :class:`LocalTrainer`
(DP-SGD under ``privacy.mode=dp-sgd``), scored zero-shot at the sites (federated evaluation) and
by the common evaluator at the coordinator, each round written as a regular RetinaFL checkpoint.

A site's round loads its manifests, starts from the round's global weights, trains
``train.steps`` local steps and returns the updated exchanged weights with metrics. The
trainer's state (optimizer moments, schedule position, data order, RNG) is kept on the site's
disk after every round (``state_dir/trainer/round_NNNN``), so round r+1 continues where round r
stopped, even in a fresh process, and a coordinator that resumes round r+1 gets the same update
as an uninterrupted run.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from shared_model import wire
from shared_model.config import EvalConfig, EvalSetConfig, FederationAppConfig
from shared_model.data.manifest import expand_manifest_paths, load_training_records
from shared_model.eval.evaluate import evaluate_model
from shared_model.federated.site import Expected, RoundResult, Site, budget_stop, open_privacy, site_seed
from shared_model.federated.task import FederatedTask
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.model.checkpoint import CONFIG, WEIGHTS, save_checkpoint
from shared_model.model.exchange import load_exchanged_state_dict
from shared_model.privacy.plan import resolve_privacy
from shared_model.runtime import resolve_device, seed_everything
from shared_model.train.centralized import build_training_dataset
from shared_model.train.proximal import ProximalTerm
from shared_model.train.trainer import LocalTrainer

log = logging.getLogger(__name__)

KEEP_STATES = 2  # trainer states kept per site: the last round's and the one before


def _state_folder(site: Site, server_round: int) -> Path:
    return site.state_dir / "trainer" / f"round_{server_round:04d}"


def _prune_states(site: Site) -> None:
    folders = sorted((site.state_dir / "trainer").glob("round_*"))
    for old in folders[:-KEEP_STATES]:
        shutil.rmtree(old, ignore_errors=True)


def _site_model(app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                expected: Expected) -> torch.nn.Module:
    """The site's model holding the round's global weights, once its schema matches the coordinator's."""
    model = build_model(app.model)
    expected.check(site.name, model)
    load_exchanged_state_dict(model, global_state)
    return model


class FoundationTask(FederatedTask):
    """The CLIP+MAE foundation model, federated."""

    name = "foundation"
    federated_evaluation = True

    def resolve(self, app: FederationAppConfig) -> FederationAppConfig:
        """The foundation's privacy checks (:func:`shared_model.privacy.plan.resolve_privacy`)."""
        return resolve_privacy(app)

    def build_model(self, app: FederationAppConfig) -> torch.nn.Module:
        """The configured RetinaCLIP model."""
        return build_model(app.model)

    def train_site(self, app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                   server_round: int, config: dict, expected: Expected = Expected(),
                   progress: bool = False) -> RoundResult:
        """Train ``app.train.steps`` local steps from ``global_state`` (FedProx's pull when
        ``config`` carries ``proximal-mu``); returns the new exchanged state_dict and the
        round's metrics (``num-examples`` weights the aggregation).

        Under ``privacy.mode=dp-sgd`` the steps are DP-SGD steps accounted in the site's ledger; a
        site whose next round would pass ``privacy.epsilon_budget`` trains 0 steps and says so
        (``privacy-budget-exhausted``, ``num-examples`` 0), and one whose ledger is missing or
        damaged refuses with :class:`~shared_model.privacy.ledger.LedgerError`.
        """
        records = load_training_records(replace(app.data, manifests=list(site.manifests)))
        device = resolve_device(site.device)
        model = _site_model(app, site, global_state, expected)
        objective = EyeCLIPObjective(app.loss, app.model.mae.norm_pix_loss)
        dataset = build_training_dataset(records, app, site.name, site.state_dir, progress)
        proximal_mu = float(config.get(wire.PROXIMAL_MU, 0.0))
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
        metrics = {wire.NUM_EXAMPLES: len(records), wire.SITE_WEIGHT: 1.0, wire.SERVER_ROUND: server_round,
                   wire.STEPS: stats.steps, "images": stats.images, wire.SECONDS: round(stats.seconds, 3),
                   "skipped-images": len(stats.skipped)}
        if session is not None:
            # The ledger is written before the update leaves: a crash in between over-counts, never under-counts.
            metrics[wire.EPSILON] = session.record(stats.steps, {"round": server_round})
            privacy = session.describe()
            # Losses and the number of sampled images are computed on the records without noise: not sent.
            del metrics["images"]
        else:
            # Only the terms computed in this round (each a mean over the steps that computed it): a CNN
            # tower has no MAE term, a site without a second modality no cross-modality pairs.
            metrics.update({f"loss.{name}": float(value) for name, value in stats.losses.items()})
            metrics.update({"anchors": stats.anchors, "paired-anchors": stats.paired})
        trainer.save_state(_state_folder(site, server_round))
        trainer.close()
        _prune_states(site)
        return RoundResult.of(model, metrics, privacy)

    def evaluate_site(self, app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                      server_round: int, expected: Expected = Expected()) -> dict[str, float]:
        """Zero-shot ACA of the global weights on the site's ``test`` split (prompt ensembles, the
        common evaluator); ``num-examples`` 0 when the site has no test rows."""
        start = time.perf_counter()
        device = resolve_device(site.device)
        model = _site_model(app, site, global_state, expected).to(device)
        sets = [EvalSetConfig(name=f"{site.name}-{i}", path=str(path), split="test")
                for i, path in enumerate(expand_manifest_paths(site.manifests))]
        results = evaluate_model(model, EvalConfig(sets=sets, linear_probe=False, kshot=[], retrieval=False),
                                 app.model.image.image_size, device)
        tasks = results.get("zero_shot", {})
        n = sum(task["n"] for task in tasks.values())
        aca = sum(task["aca"] * task["n"] for task in tasks.values()) / n if n else 0.0
        return {wire.NUM_EXAMPLES: n, wire.SERVER_ROUND: server_round, wire.ZERO_SHOT_ACA: aca,
                wire.SECONDS: round(time.perf_counter() - start, 3)}

    def write_model(self, model: torch.nn.Module, app: FederationAppConfig, folder: Path, server_round: int,
                    privacy: dict) -> list[str]:
        """A regular RetinaFL checkpoint (``retina-eval`` loads it)."""
        save_checkpoint(model, app.model, folder, extra={"round": server_round})
        return [WEIGHTS, CONFIG]

    def evaluate(self, model: torch.nn.Module, app: FederationAppConfig, device: torch.device) -> dict:
        """The common evaluator on ``app.eval``'s sets."""
        return evaluate_model(model, app.eval, app.model.image.image_size, device)
