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
from shared_model.data.dataset import RetinaDataset
from shared_model.data.manifest import expand_manifest_paths
from shared_model.eval.evaluate import evaluate_model
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.model.exchange import exchanged_state_dict, load_exchanged_state_dict
from shared_model.train.centralized import load_training_records
from shared_model.train.proximal import ProximalTerm
from shared_model.train.trainer import LocalTrainer, resolve_device, seed_everything

log = logging.getLogger(__name__)

LOSS_TERMS = ("image_text", "image_image", "mae", "total")
KEEP_STATES = 2  # trainer states kept per site: the last round's and the one before


@dataclass(frozen=True)
class Site:
    """Where a site's data and state live; never sent to the coordinator."""

    name: str
    manifests: list[str]
    state_dir: Path
    device: str = "auto"


def site_seed(seed: int, site: str, server_round: int) -> int:
    """Seed of a site's first round: distinct per (run seed, site), stable across processes."""
    return int(np.random.SeedSequence([seed, zlib.crc32(site.encode()), server_round]).generate_state(1)[0])


def _state_folder(site: Site, server_round: int) -> Path:
    return site.state_dir / "trainer" / f"round_{server_round:04d}"


def _prune_states(site: Site) -> None:
    folders = sorted((site.state_dir / "trainer").glob("round_*"))
    for old in folders[:-KEEP_STATES]:
        shutil.rmtree(old, ignore_errors=True)


def train_round(app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor], server_round: int,
                proximal_mu: float = 0.0, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train ``app.train.steps`` local steps from ``global_state``; returns the new exchanged
    state_dict and the round's metrics (``num-examples`` weights the aggregation)."""
    records = load_training_records(replace(app.data, manifests=list(site.manifests)))
    device = resolve_device(site.device)
    model = build_model(app.model)
    load_exchanged_state_dict(model, global_state)
    objective = EyeCLIPObjective(app.loss, app.model.mae.norm_pix_loss)
    dataset = RetinaDataset(records, app.model.image.image_size, train=True, text_source=app.data.text_source,
                            pair_modalities=app.data.pair_modalities and app.loss.image_image > 0,
                            augment=app.data.augment)
    proximal = ProximalTerm(model, proximal_mu) if proximal_mu > 0 else None
    trainer = LocalTrainer(model, objective, app.train, device, total_steps=app.federation.rounds * app.train.steps,
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
    trainer.save_state(_state_folder(site, server_round))
    _prune_states(site)
    metrics = {"num-examples": len(records), "server-round": server_round, "steps": stats.steps,
               "images": stats.images, "seconds": round(stats.seconds, 3), "skipped-images": len(stats.skipped)}
    metrics.update({f"loss.{name}": float(stats.losses.get(name, 0.0)) for name in LOSS_TERMS})
    return exchanged_state_dict(model), metrics


def evaluate_round(app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                   server_round: int) -> dict[str, float]:
    """Zero-shot ACA of the global weights on the site's ``test`` split (prompt ensembles, the
    common evaluator); ``num-examples`` 0 when the site has no test rows."""
    start = time.perf_counter()
    device = resolve_device(site.device)
    model = build_model(app.model)
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
