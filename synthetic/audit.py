"""The memorisation and quality audit a synthetic corpus must pass before it leaves the site.

Near copies (Carlini et al. 2023, "Extracting Training Data from Diffusion Models"): every
synthetic image's nearest training image, in pixel space and in the foundation model's image
embedding space; the threshold is a low quantile of the same distance for *held-out real*
images, which the generator never saw — a synthetic image closer to the training set than
almost any unseen real image is a likely copy. Distance to closest record (DCR): against equal-
size training and held-out sets, the share of synthetic images closer to training than to
held-out must stay near one half (at most ``max_closer_to_train``). Captions may not contain a
verbatim span of a training report (spans the public dictionary itself writes are exempt). Also measured: label fidelity (the common evaluator's zero-
shot class is a conditioning label) and diversity (mean pairwise embedding distance, against
real held-out images). Writes ``audit.json`` and ``closest_pairs.png`` into the corpus folder.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.progress import track

from shared_model.atomic_files import write_json_atomic
from shared_model.config import AuditConfig, DataConfig
from shared_model.data.manifest import Record, load_manifest
from shared_model.data.preprocess import prepare_image
from shared_model.data.readers import ImageReadError, read_image
from shared_model.eval.evaluate import class_embeddings, embed_records
from shared_model.eval.zero_shot import zero_shot_logits
from shared_model.model.checkpoint import sha256_file
from shared_model.prompts import build_caption, get_category
from shared_model.train.centralized import load_training_records
from shared_model.train.trainer import resolve_device
from synthetic.sampling import MANIFEST

AUDIT_FILE = "audit.json"
DCR_DRAWS = 25
PUBLIC_DRAWS = 300
PAIRS_FILE = "closest_pairs.png"


class AuditError(ValueError):
    """The audit cannot be run as asked (missing held-out images, unreadable corpus...)."""


def pixel_features(records: list[Record], size: int, what: str = "images",
                   progress: bool = False) -> tuple[np.ndarray, list[Record]]:
    """[N, 3*size*size] images in [0, 1] (readable records only)."""
    rows, kept = [], []
    for record in track(records, description=f"reading {what}", disable=not progress, transient=True):
        try:
            img = read_image(record.image, size)
        except ImageReadError:
            continue
        if img.ndim == 4:
            img = img[img.shape[0] // 2]
        rows.append(prepare_image(img, record.modality, size).flatten().numpy())
        kept.append(record)
    if not rows:
        raise AuditError("no readable images to audit")
    return np.stack(rows), kept


def nearest(a: np.ndarray, b: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a`` its distance to, and index of, the nearest row of ``b``
    (``rms``: root-mean-square pixel difference; ``cosine``: 1 - cosine similarity)."""
    if metric == "cosine":
        d = 1.0 - a @ b.T
    else:
        d = np.sqrt(np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T, 0) / a.shape[1])
    idx = d.argmin(axis=1)
    return d[np.arange(len(a)), idx], idx


def space_checks(synthetic: np.ndarray, train: np.ndarray, heldout: np.ndarray, metric: str, cfg: AuditConfig,
                 seed: int) -> dict:
    """Near-copy share and DCR share in one feature space."""
    syn_train, syn_index = nearest(synthetic, train, metric)
    held_train, _ = nearest(heldout, train, metric)
    threshold = float(np.quantile(held_train, cfg.near_copy_quantile))
    near = syn_train < threshold
    size = min(len(train), len(heldout))
    to_held, _ = nearest(synthetic, heldout[:size], metric)
    rng = random.Random(seed)
    # Averaged over random equal-size training subsets, so the verdict does not hang on one draw.
    closer = float(np.mean([np.mean(nearest(synthetic, train[rng.sample(range(len(train)), size)], metric)[0] < to_held)
                            for _ in range(DCR_DRAWS)]))
    return {"metric": metric, "threshold": threshold, "near_copy_fraction": float(near.mean()),
            "near_copies": [int(i) for i in np.flatnonzero(near)], "closer_to_train_fraction": closer,
            "dcr_set_size": size, "median_nn_distance_synthetic": float(np.median(syn_train)),
            "median_nn_distance_heldout": float(np.median(held_train)),
            "passed": bool(near.mean() <= cfg.max_near_copy_fraction and closer <= cfg.max_closer_to_train),
            "_nearest": syn_index, "_distance": syn_train}


def _windows(text: str, length: int) -> set[str]:
    return {text[i:i + length] for i in range(len(text) - length + 1)}


def public_windows(records: list[Record], length: int, draws: int = PUBLIC_DRAWS) -> dict[tuple, set[str]]:
    """Per (label set, modality): every span the public expert dictionary itself writes for it,
    over ``draws`` seeded captions. A report that quotes the dictionary shares such spans with
    any caption; they are public text, not a leak."""
    out: dict[tuple, set[str]] = {}
    for key in {(r.labels, r.modality) for r in records if r.labels}:
        rng = random.Random(0)
        out[key] = set().union(*(_windows(build_caption(list(key[0]), rng, key[1]), length) for _ in range(draws)))
    return out


def verbatim_spans(records: list[Record], reports: list[str], length: int) -> list[int]:
    """Indices of records whose caption shares a span of ``length`` characters with a training
    report, other than spans the public dictionary produces for the record's labels."""
    report_windows = set().union(*(_windows(r, length) for r in reports)) if reports else set()
    public = public_windows(records, length)
    return [k for k, r in enumerate(records)
            if (_windows(r.report, length) & report_windows) - public.get((r.labels, r.modality), set())]


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean cosine distance over distinct pairs."""
    n = len(embeddings)
    sims = embeddings @ embeddings.T
    return float((n * n - sims.sum()) / max(n * (n - 1), 1))


def label_fidelity(model, records: list[Record], embeddings: np.ndarray, categories: list[str]) -> float:
    """Share of images whose zero-shot class (among ``categories``) is one of their labels."""
    hits = []
    for modality in sorted({r.modality for r in records}):
        rows = [i for i, r in enumerate(records) if r.modality == modality and r.labels]
        if not rows:
            continue
        logits = zero_shot_logits(embeddings[rows], class_embeddings(model, categories, modality),
                                  float(model.logit_scale().detach()))
        predicted = logits.argmax(axis=1)
        hits += [categories[p] in {get_category(label).key for label in records[i].labels}
                 for i, p in zip(rows, predicted)]
    return float(np.mean(hits)) if hits else float("nan")


def run_audit(corpus: Path, data: DataConfig, cfg: AuditConfig, device: str = "auto", seed: int = 0,
              progress: bool = False) -> dict:
    """Audit ``corpus`` against the site's training rows and its held-out (val/test) rows of
    ``data.manifests``; writes and returns the audit record (``passed`` is the verdict)."""
    synthetic_records = load_manifest(corpus / MANIFEST).records
    train_records = load_training_records(data)
    heldout_records = [r for split in ("val", "test") for r in _split(data, split)]
    if len(heldout_records) < 10:
        raise AuditError(f"{len(heldout_records)} held-out (val/test) rows in {data.manifests}: the audit calibrates "
                         "its thresholds on real images the generator never saw; give the site's held-out rows")
    syn_px, synthetic_records = pixel_features(synthetic_records, cfg.pixel_size, "synthetic images", progress)
    train_px, train_records = pixel_features(train_records, cfg.pixel_size, "training images", progress)
    held_px, heldout_records = pixel_features(heldout_records, cfg.pixel_size, "held-out images", progress)
    pixel = space_checks(syn_px, train_px, held_px, "rms", cfg, seed)
    result: dict = {"corpus": str(corpus), "manifest_sha256": sha256_file(corpus / MANIFEST),
                    "n_synthetic": len(synthetic_records), "n_train": len(train_records),
                    "n_heldout": len(heldout_records), "config": cfg.__dict__, "pixel": pixel}
    spaces = [pixel]
    if cfg.checkpoint:
        from shared_model.model.checkpoint import load_checkpoint

        dev = resolve_device(device)
        model, model_cfg = load_checkpoint(cfg.checkpoint, dev)
        size = model_cfg.image.image_size
        syn_e, train_e, held_e = (embed_records(model, recs, size, dev, progress=progress).embeddings
                                  for recs in (synthetic_records, train_records, heldout_records))
        embedding = space_checks(syn_e, train_e, held_e, "cosine", cfg, seed)
        spaces.append(embedding)
        categories = sorted({get_category(label).key for r in synthetic_records for label in r.labels})
        result.update(embedding=embedding, label_fidelity={
            "synthetic": label_fidelity(model, synthetic_records, syn_e, categories),
            "heldout_real": label_fidelity(model, heldout_records, held_e, categories)},
            diversity={"synthetic": mean_pairwise_distance(syn_e), "heldout_real": mean_pairwise_distance(held_e)})
    copied = verbatim_spans(synthetic_records, [r.report for r in train_records if r.report], cfg.verbatim_chars)
    result["captions"] = {"verbatim_span_chars": cfg.verbatim_chars, "captions_with_verbatim_span": copied,
                          "passed": not copied}
    result["passed"] = all(s["passed"] for s in spaces) and not copied
    write_closest_pairs(corpus / PAIRS_FILE, syn_px, train_px, pixel, cfg)
    for space in spaces:
        space.pop("_nearest"), space.pop("_distance")
    write_json_atomic(corpus / AUDIT_FILE, result)
    return result


def _split(data: DataConfig, split: str) -> list[Record]:
    try:
        return load_training_records(replace(data, split=split))
    except ValueError:  # no rows of that split
        return []


def write_closest_pairs(path: Path, synthetic: np.ndarray, train: np.ndarray, pixel: dict, cfg: AuditConfig) -> None:
    """The synthetic images nearest to a training image, each above its neighbour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(pixel["_distance"])[: cfg.pairs_shown]
    size = cfg.pixel_size
    fig, axes = plt.subplots(2, max(len(order), 1), figsize=(1.6 * max(len(order), 1), 3.6), squeeze=False)
    for col, k in enumerate(order):
        for row, image in enumerate((synthetic[k], train[pixel["_nearest"][k]])):
            axes[row, col].imshow(image.reshape(3, size, size).transpose(1, 2, 0).clip(0, 1))
            axes[row, col].axis("off")
        axes[0, col].set_title(f"d={pixel['_distance'][k]:.3f}", fontsize=7)
    fig.suptitle(f"closest synthetic (top) / training (bottom); near-copy threshold {pixel['threshold']:.3f}",
                 fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
