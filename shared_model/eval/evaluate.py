"""The common evaluator: embeds evaluation sets with a model and runs the FLAIR protocol on them
(zero-shot with expert-knowledge prompt ensembles, linear probe, k-shot probe, image-text
retrieval), one task per (data set, modality), and image-image retrieval between the modalities
of a set (the same eye's CFP and OCT, as EyeCLIP reports).

Every aggregate of a federated run and every centralized run is scored by this one function,
so their figures are comparable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from shared_model.config import EvalAppConfig, EvalConfig, EvalSetConfig
from shared_model.data.adapters import from_class_folders, from_flair_csv
from shared_model.data.dataset import load_slices, volume_slices
from shared_model.data.embedded import ensure_phantom
from shared_model.data.manifest import Record, load_manifest, validate_table
from shared_model.data.pairing import pairing_key
from shared_model.data.preprocess import to_model_input
from shared_model.data.readers import ImageReadError
from shared_model.eval.linear_probe import kshot_probe, linear_probe_cv
from shared_model.eval.metrics import classification_metrics
from shared_model.eval.report import write_report
from shared_model.eval.retrieval import retrieval_metrics
from shared_model.eval.zero_shot import ensemble_class_embedding, zero_shot_logits
from shared_model.model.checkpoint import load_checkpoint
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.model.slice_pooling import slice_positions
from shared_model.prompts import DR_GRADES, prompt_ensemble
from shared_model.runtime import resolve_device

log = logging.getLogger(__name__)

EVAL_FORMATS = ("manifest", "flair_csv", "folder")


def load_eval_records(cfg: EvalSetConfig) -> list[Record]:
    """Records of one evaluation set in any supported layout (invalid rows are refused, not skipped)."""
    path = Path(cfg.path)
    if cfg.format == "manifest":
        manifest = load_manifest(path)
    elif cfg.format == "flair_csv":
        manifest = validate_table(from_flair_csv(path, path.parent, cfg.image_root, cfg.modality), path, path.parent)
    elif cfg.format == "folder":
        manifest = validate_table(from_class_folders(path, path, cfg.modality), path, path)
    else:
        raise ValueError(f"eval set {cfg.name!r}: format must be one of {EVAL_FORMATS}, got {cfg.format!r}")
    return manifest.select(cfg.split)


@dataclass
class EmbeddedSet:
    """Unit-norm image embeddings of the readable records of one task and, when asked for, the
    image tower's pooled features (before the projection)."""

    records: list[Record]
    embeddings: np.ndarray  # [N, D]
    skipped: list[str]
    features: np.ndarray | None = None  # [N, width]


@torch.no_grad()
def embed_records(model: RetinaCLIP, records: list[Record], image_size: int, device: torch.device,
                  batch_size: int = 64, progress: bool = False, features: bool = False) -> EmbeddedSet:
    """Embed images (volumes through the slice-attention adapter when the model has one, else
    their central B-scan); unreadable files are logged, skipped and listed. With ``features`` also
    the tower's pooled features (a volume's: the mean over the slices it was embedded from)."""
    model.eval()
    kept, chunks, feature_chunks, skipped, pending = [], [], [], [], []

    def flush() -> None:
        if pending:
            imgs = to_model_input(torch.stack([p for _, p in pending]).to(device), model.input_norm)
            chunks.append(model.encode_image(imgs).float().cpu())
            if features:
                feature_chunks.append(model.tower_features(imgs).float().cpu())
            kept.extend(r for r, _ in pending)
            pending.clear()

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("embedding", total=len(records))
        for record in records:
            bar.advance(task)
            try:
                slices = load_slices(record, image_size)
            except ImageReadError as exc:
                log.warning("unreadable image skipped: %s", exc)
                skipped.append(str(exc))
                continue
            if len(slices) > 1 and model.volume_pool is not None:
                flush()
                table = model.volume_pool.max_slices
                picked = volume_slices(len(slices), table, None)
                imgs = to_model_input(slices[picked].to(device), model.input_norm)
                positions = slice_positions(picked, len(slices), table).to(device)
                chunks.append(model.encode_volume(imgs[None], positions=positions[None]).float().cpu())
                if features:
                    feature_chunks.append(model.tower_features(imgs).float().cpu().mean(0, keepdim=True))
                kept.append(record)
                continue
            pending.append((record, slices[len(slices) // 2]))
            if len(pending) == batch_size:
                flush()
        flush()
    embeddings = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
    tower = torch.cat(feature_chunks).numpy() if feature_chunks else None
    return EmbeddedSet(kept, embeddings, skipped, tower)


@torch.no_grad()
def class_embeddings(model: RetinaCLIP, classes: list[str], modality: str) -> np.ndarray:
    """[C, D] class embeddings: each the re-normalised mean of its prompt-ensemble embeddings."""
    model.eval()
    return np.stack([ensemble_class_embedding(model.encode_text(prompt_ensemble(c, modality)).float().cpu().numpy())
                     for c in classes])


def task_targets(records: list[Record], classes: list[str] | None) -> tuple[list[str], np.ndarray]:
    """Classes of a task and each record's target index (-1: none of its labels is a task class).

    A record's target is its first label that is a task class (manifests list the primary finding
    first); by default the classes are the primary labels present.
    """
    names = list(classes) if classes else sorted({r.labels[0] for r in records if r.labels})
    index = {c: i for i, c in enumerate(names)}
    targets = [next((index[label] for label in r.labels if label in index), -1) for r in records]
    return names, np.asarray(targets, dtype=np.int64)


def _probe_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified half split of a task into a k-shot training pool and a test part."""
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        pool.extend(members[: len(members) // 2])
        test.extend(members[len(members) // 2:])
    return np.sort(pool), np.sort(test)


def evaluate_model(model: RetinaCLIP, cfg: EvalConfig, image_size: int, device: torch.device,
                   progress: bool = False) -> dict:
    """Run every configured evaluation on every set; returns the report dict of ``eval.report``."""
    results: dict[str, dict] = {"zero_shot": {}, "linear_probe": {}, "linear_probe_features": {}, "kshot": {},
                                "retrieval": {}, "cross_modal": {}, "skipped": {}}
    for set_cfg in cfg.sets:
        records = load_eval_records(set_cfg)
        by_modality: dict[str, EmbeddedSet] = {}
        for modality in sorted({r.modality for r in records}):
            name = f"{set_cfg.name}/{modality}"
            embedded = embed_records(model, [r for r in records if r.modality == modality], image_size, device,
                                     cfg.batch_size, progress, features=cfg.linear_probe and cfg.probe_tower_features)
            if embedded.skipped:
                results["skipped"][name] = embedded.skipped
            _evaluate_task(model, cfg, set_cfg, name, modality, embedded, results)
            by_modality[modality] = embedded
        if cfg.cross_modal_retrieval:
            _cross_modal_retrieval(set_cfg.name, by_modality, results)
    return {k: v for k, v in results.items() if v}


def _cross_modal_retrieval(set_name: str, by_modality: dict[str, EmbeddedSet], results: dict) -> None:
    """Image-image retrieval between every two modalities of a set (EyeCLIP's CFP<->OCT): the
    correct gallery items of a query are the other modality's images of the same (patient, eye)."""
    names = sorted(m for m, e in by_modality.items() if len(e.records))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            query, gallery = by_modality[a], by_modality[b]
            position: dict[tuple, list[int]] = {}
            for j, record in enumerate(gallery.records):
                key = pairing_key(record, "eye")
                if key is not None:
                    position.setdefault(key, []).append(j)
            correct = [position.get(pairing_key(r, "eye"), []) for r in query.records]  # no eye: no key, none
            if not any(correct):
                continue
            metrics = retrieval_metrics(query.embeddings @ gallery.embeddings.T, correct)
            results["cross_modal"][f"{set_name}/{a}-{b}"] = {**metrics, "modalities": [a, b]}


def _evaluate_task(model: RetinaCLIP, cfg: EvalConfig, set_cfg: EvalSetConfig, name: str, modality: str,
                   embedded: EmbeddedSet, results: dict) -> None:
    classes, targets = task_targets(embedded.records, set_cfg.classes)
    keep = targets >= 0
    emb, y = embedded.embeddings[keep], targets[keep]
    if len(classes) < 2 or len(y) == 0:
        log.warning("%s: fewer than two classes with examples; classification tasks skipped", name)
    else:
        ordinal = set(classes) <= set(DR_GRADES) and len(classes) > 2
        if cfg.zero_shot:
            logits = zero_shot_logits(emb, class_embeddings(model, classes, modality),
                                      float(model.logit_scale().detach()))
            results["zero_shot"][name] = classification_metrics(y, logits, classes, ordinal=ordinal)
        counts = np.bincount(y, minlength=len(classes))
        present = counts[counts > 0]
        if cfg.linear_probe and len(present) >= 2 and present.min() >= 2:
            patients = [r.patient_id for r, kept in zip(embedded.records, keep) if kept]
            results["linear_probe"][name] = linear_probe_cv(emb, y, class_names=classes, n_splits=cfg.probe_folds,
                                                            ordinal=ordinal, seed=cfg.seed, groups=patients)
            if embedded.features is not None:
                results["linear_probe_features"][name] = linear_probe_cv(
                    embedded.features[keep], y, class_names=classes, n_splits=cfg.probe_folds, ordinal=ordinal,
                    seed=cfg.seed, groups=patients)
        pool, test = _probe_split(y, cfg.seed)
        for k in cfg.kshot:
            if len(present) >= 2 and np.bincount(y[pool], minlength=len(classes))[counts > 0].min() >= k:
                results["kshot"][f"{name}/k={k}"] = kshot_probe(emb[pool], y[pool], emb[test], y[test], k,
                                                               cfg.kshot_trials, cfg.seed, class_names=classes,
                                                               ordinal=ordinal)
    reports = [r.report for r in embedded.records]
    if cfg.retrieval and all(reports) and len(reports) > 1:
        texts = list(dict.fromkeys(reports))
        with torch.no_grad():
            text_emb = np.concatenate([model.encode_text(texts[i:i + cfg.batch_size]).float().cpu().numpy()
                                       for i in range(0, len(texts), cfg.batch_size)])
        position = {t: i for i, t in enumerate(texts)}
        results["retrieval"][name] = retrieval_metrics(embedded.embeddings @ text_emb.T,
                                                       [{position[t]} for t in reports])


def run_evaluation(cfg: EvalAppConfig, progress: bool = True) -> dict:
    """``retina-eval``: load a checkpoint folder, evaluate it, write the report into ``cfg.out_dir``."""
    if cfg.phantom.ensure:
        ensure_phantom(cfg.phantom, progress)
    device = resolve_device(cfg.device)
    model, model_cfg = load_checkpoint(cfg.checkpoint, device)
    results = evaluate_model(model, cfg.eval, model_cfg.image.image_size, device, progress)
    results["meta"] = {"checkpoint": str(cfg.checkpoint), "model": model_cfg.name}
    write_report(results, Path(cfg.out_dir), f"RetinaFL evaluation of {cfg.checkpoint}")
    return results
