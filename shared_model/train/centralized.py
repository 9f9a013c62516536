"""Centralized training run (``retina-train``): data -> model -> local trainer -> checkpoint ->
common evaluation -> report folder. A run folder can be resumed where it stopped."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from shared_model.atomic_files import write_json_atomic
from shared_model.conf import write_resolved_config
from shared_model.config import TrainAppConfig
from shared_model.data.dataset import RetinaDataset
from shared_model.data.decoded_cache import open_cache
from shared_model.data.embedded import ensure_phantom
from shared_model.data.manifest import Record, load_training_records
from shared_model.data.readers import summarise_unreadable
from shared_model.eval.evaluate import evaluate_model
from shared_model.eval.report import write_report
from shared_model.losses import EyeCLIPObjective
from shared_model.losses.objective import term_status
from shared_model.model import build_model
from shared_model.model.checkpoint import load_weights, save_checkpoint, weights_nbytes
from shared_model.privacy.plan import resolve_privacy
from shared_model.privacy.session import DPSession
from shared_model.reporting.metrics_log import MetricsLog
from shared_model.reporting.run_report import write_run_report
from shared_model.run_folder import check_run_folder
from shared_model.runtime import resolve_device, seed_everything
from shared_model.train.trainer import LocalTrainer, TrainStats

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


def objective_terms(cfg: TrainAppConfig) -> dict[str, str]:
    """Each EyeCLIP term of a run: "on" or why it is configured off (:func:`term_status`)."""
    return term_status(cfg.loss, cfg.data.pair_modalities, cfg.model.mae.enabled, cfg.privacy.mode == "dp-sgd")


def build_training_dataset(records: list[Record], cfg: TrainAppConfig, site: str | None = None,
                           state_dir: Path | None = None, progress: bool = False) -> RetinaDataset:
    """The augmented training data set of a run (centralized, or the named site's), as configured.

    With ``data.cache_dir`` set, its images come from the decoded cache (filled first when absent
    or outdated); a relative folder lies in ``state_dir`` (the site's), else in the run folder.

    When the cross-modality term is on, the pairs found are logged; none at all is an error for a
    centralized run and a warning at a site (the term is then not computed there, and absent from
    its losses), since other sites may hold both modalities."""
    table = cfg.model.volume_max_slices
    slices = min(cfg.data.volume_slices or table, table)
    pairing = objective_terms(cfg)["image_image"] == "on"
    size = cfg.model.image.image_size
    cache = None
    if cfg.data.cache_dir:
        folder = (state_dir or Path(cfg.run_dir)) / Path(cfg.data.cache_dir).expanduser()
        cache = open_cache(records, size, folder, site or "train", cfg.data.num_workers, progress)
    dataset = RetinaDataset(records, size, train=True, text_source=cfg.data.text_source,
                            pair_modalities=pairing, augment=cfg.data.augment, class_balance=cfg.data.class_balance,
                            pair_by=cfg.data.pair_by, volume_slices=slices, volume_table=table, cache=cache)
    if pairing:
        where = f"site {site}" if site else "training data"
        log.info("%s: modality pairs by %s: %s", where, cfg.data.pair_by, dataset.pairing.line())
        if dataset.pairing.paired == 0:
            message = (f"{where}: loss.image_image={cfg.loss.image_image} (cross-modality contrast) is on, but none "
                       f"of the {len(records):,} training images has a partner of another modality under "
                       f"data.pair_by={cfg.data.pair_by} ({dataset.pairing.no_key:,} have no eye/study); "
                       "list the other modality's manifest in data.manifests, or set loss.image_image=0")
            if site is None:
                raise ValueError(message)
            log.warning("%s; the term is not computed at this site", message)
    return dataset


def checkpoint_nbytes(model: torch.nn.Module) -> int:
    """Disk bytes of a run's checkpoint folder: the weights, and the trainer state's two AdamW
    moments per trainable parameter."""
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights_nbytes(model) + moments


def run_training(cfg: TrainAppConfig, progress: bool = True) -> dict:
    """Train centrally (DP-SGD with its ledger in the run folder when ``privacy.mode=dp-sgd``),
    checkpoint, evaluate; returns the evaluation results dict."""
    cfg = resolve_privacy(cfg)
    run_dir = Path(cfg.run_dir)
    if cfg.phantom.ensure:
        ensure_phantom(cfg.phantom, progress)
    records = load_training_records(cfg.data)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model)
    # Each checkpoint file is replaced through a temporary copy: the old and the new one coexist.
    check_run_folder(run_dir, 2 * checkpoint_nbytes(model))
    write_resolved_config(cfg, run_dir)
    objective = EyeCLIPObjective(cfg.loss, cfg.model.mae.norm_pix_loss)
    dataset = build_training_dataset(records, cfg, progress=progress)
    ckpt = run_dir / CHECKPOINT_DIR
    session = None
    if cfg.privacy.mode == "dp-sgd":  # the run folder holds the ledger: it is this trainer's "site"
        session = DPSession.open(run_dir, cfg.privacy, model, records, cfg.train.batch_size, cfg.train.steps,
                                 trained_before=(ckpt / "trainer_state.pt").is_file())
        trainer = session.trainer(objective, cfg.train, device, cfg.train.steps, cfg.data.num_workers)
    else:
        trainer = LocalTrainer(model, objective, cfg.train, device, num_workers=cfg.data.num_workers)
    if cfg.resume and (ckpt / "trainer_state.pt").is_file():
        load_weights(model, ckpt / "model.safetensors")
        trainer.load_state(ckpt)
        log.info("resumed %s at step %d", run_dir, trainer.step)
    log.info("training on %d images (%s) on %s", len(records), ", ".join(cfg.data.manifests), device)
    chunks: list[TrainStats] = []
    start = time.perf_counter()
    every = cfg.train.checkpoint_every or cfg.train.steps
    metrics = MetricsLog(run_dir, cfg.report.tensorboard)
    while trainer.step < cfg.train.steps:
        chunk = min(every, cfg.train.steps - trainer.step)
        if session is not None:
            if not session.allows(chunk):
                break
            session.prepare(cfg.model.image.image_size, device)  # releases the image centre once, if needed
        budget = None if cfg.train.max_seconds is None else cfg.train.max_seconds - (time.perf_counter() - start)
        chunks.append(trainer.run(dataset, chunk, budget, progress, metrics))
        extra = {"step": trainer.step}
        if session is not None:
            session.record(chunks[-1].steps, {"step": trainer.step})
            extra["privacy"] = session.describe()
        save_checkpoint(model, cfg.model, ckpt, extra=extra)
        trainer.save_state(ckpt)
        if chunks[-1].steps < chunk:  # time budget reached
            break
    trainer.close()
    metrics.close()
    stats = TrainStats.merge(chunks)
    if stats.skipped:
        log.warning("training skipped %s", summarise_unreadable(stats.skipped))
    if dataset.pair_modalities:
        log.info("cross-modality term: %s of %s anchors had a partner; computed in %s of %s steps", f"{stats.paired:,}",
                 f"{stats.anchors:,}", f"{stats.term_steps.get('image_image', 0):,}", f"{stats.steps:,}")
    write_json_atomic(run_dir / "train_summary.json", {**asdict(stats), "step": trainer.step, "device": str(device)})
    results = evaluate_model(model, cfg.eval, cfg.model.image.image_size, device, progress)
    results["meta"] = {"step": trainer.step, "model": cfg.model.name, "train": asdict(stats)}
    if session is not None:
        results["meta"]["privacy"] = session.describe()
    if cfg.eval.sets:
        write_report(results, run_dir / "eval", f"RetinaFL {cfg.model.name} — step {trainer.step}")
    if cfg.report.html:
        write_run_report(run_dir)
    return results
