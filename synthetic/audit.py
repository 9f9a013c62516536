"""The memorisation and quality audit a synthetic corpus must pass before it leaves the site.

Near copies (Carlini et al. 2023, "Extracting Training Data from Diffusion Models"): every
synthetic image's nearest training image, in pixel space and in the foundation model's image
embedding space; the threshold is a low quantile of the same distance for *held-out real*
images, which the generator never saw — a synthetic image closer to the training set than
almost any unseen real image is a likely copy. Distance to closest record (DCR): against equal-
size training and held-out sets, the share of synthetic images closer to training than to
held-out must stay near one half (at most ``max_closer_to_train``). Captions may not contain a
verbatim span of a training report (spans the public dictionary itself writes are exempt).
Also measured: label fidelity (the common evaluator's zero-shot class is a conditioning label)
and diversity (mean pairwise embedding distance, against real held-out images). Writes
``audit.json`` and ``closest_pairs.png`` into the corpus folder.

Held-out images are the site's val/test rows and the patients the generator's run held out of
training (:mod:`synthetic.holdout`). Every image is read: an unreadable synthetic image fails the
corpus (it was not checked), and so does an unreadable training or held-out image (a damaged
reference cannot vouch for a corpus); the record lists each one by manifest row. The record keeps
every synthetic image's SHA-256, which export checks.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
from rich.progress import track

from shared_model.atomic_files import write_json_atomic
from shared_model.config import AuditConfig, DataConfig
from shared_model.data.manifest import ManifestIssue, Record, load_manifest, load_training_records
from shared_model.data.preprocess import prepare_image
from shared_model.data.readers import ImageReadError, read_frames, summarise_unreadable
from shared_model.eval.evaluate import class_embeddings, embed_records
from shared_model.eval.zero_shot import zero_shot_logits
from shared_model.file_digest import sha256_file
from shared_model.prompts import build_caption, get_category
from shared_model.runtime import resolve_device
from synthetic.holdout import HELD_OUT_SPLITS, HOLDOUT_FILE, read_holdout, split_records
from synthetic.sampling import MANIFEST

AUDIT_FILE = "audit.json"
DCR_DRAWS = 25
MIN_HELDOUT = 10  # real images the generator never saw, to calibrate the thresholds on
PUBLIC_DRAWS = 300
PAIRS_FILE = "closest_pairs.png"


class AuditError(ValueError):
    """The audit cannot be run as asked (missing held-out images, unreadable corpus...)."""


def pixel_features(records: list[Record], size: int, what: str = "images",
                   progress: bool = False) -> tuple[np.ndarray, list[Record], list[str]]:
    """[N, 3*size*size] images in [0, 1] (a volume's central B-scan) of the readable records, those
    records, and one line per unreadable file naming its manifest and row (as
    :func:`shared_model.data.manifest.unreadable_images` words it)."""
    rows, kept, unreadable = [], [], []
    for record in track(records, description=f"reading {what}", disable=not progress, transient=True):
        try:
            frames = read_frames(record, size)
        except ImageReadError as exc:
            unreadable.append(str(ManifestIssue(record.source, record.row, "image", str(exc), "unreadable image")))
            continue
        rows.append(prepare_image(frames[len(frames) // 2], record.modality, size).flatten().numpy())
        kept.append(record)
    if not rows:
        raise AuditError(f"no readable {what} to audit: {summarise_unreadable(unreadable)}")
    return np.stack(rows), kept, unreadable


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


def reference_records(data: DataConfig, run_dir: Path | None = None) -> tuple[list[Record], list[Record], dict]:
    """The training rows the generator saw, the held-out rows it never saw — ``data.manifests``'
    val/test rows and the rows of the patients the generator run folder ``run_dir`` held out of
    training (its ``holdout.json``) — and where the held-out rows come from."""
    train = load_training_records(data)
    heldout = [r for split in HELD_OUT_SPLITS for r in split_records(data, split)]
    path = run_dir / HOLDOUT_FILE if run_dir is not None else None
    recorded = read_holdout(path) if path is not None else None
    source = {"val_test_rows": len(heldout), "holdout_file": None, "holdout_patients": 0, "holdout_rows": 0}
    if recorded:
        images = {row["image"] for row in recorded["rows"]}
        kept_out = [r for r in train if str(r.image.resolve()) in images]
        missing = sorted(images - {str(r.image.resolve()) for r in kept_out})
        if missing:
            raise AuditError(f"{path}: {len(missing)} held-out image(s) are not training rows of data.manifests="
                             f"{data.manifests} (first: {missing[0]}); audit against the manifests the generator "
                             "was trained on")
        patients = set(recorded["patients"])
        train = [r for r in train if r.patient_id not in patients]
        heldout += kept_out
        source.update(holdout_file=str(path), holdout_patients=len(patients), holdout_rows=len(kept_out))
    if len(heldout) < MIN_HELDOUT:
        if recorded:
            where = (f"{len(kept_out)} rows of the {len(patients)} patients in {path} and "
                     f"{source['val_test_rows']} val/test rows")
            fix = ("retrain the generator with a larger train.holdout_fraction, or add val/test rows of patients it "
                   "never trained on")
        else:
            where = f"val/test rows of data.manifests={data.manifests}"
            fix = (f"{run_dir} has no {HOLDOUT_FILE} (retina-synth train writes one when train.holdout_fraction > 0 "
                   "and the manifests have no val/test rows): retrain the generator with train.holdout_fraction=0.1, "
                   "or add val/test rows of patients it never trained on (e.g. a manifest of them with split=test: "
                   "retina-synth audit ... 'data.manifests=[SITE.csv,HELDOUT.csv]')" if run_dir is not None
                   else "give the site's held-out rows")
        raise AuditError(f"{len(heldout)} held-out rows ({where}): the audit calibrates its thresholds on at least "
                         f"{MIN_HELDOUT} real images the generator never saw; {fix}")
    return train, heldout, source


def failures(audit: dict) -> list[str]:
    """Why an audit record's verdict is FAILED, one line per reason (none: it passed)."""
    failed = []
    unreadable = audit["unreadable"]
    if unreadable["synthetic"]:
        failed.append(f"synthetic images not checked: {summarise_unreadable(unreadable['synthetic'])}")
    for key, name in (("train", "training"), ("heldout", "held-out")):
        if unreadable[key]:
            failed.append(f"{name} images: {summarise_unreadable(unreadable[key])}; the audit cannot vouch for a "
                          "corpus against images it could not read: repair or remove those rows "
                          "(retina-data validate lists them)")
    for space in ("pixel", "embedding"):
        s = audit.get(space)
        if s and not s["passed"]:
            failed.append(f"{space} space: near copies {s['near_copy_fraction']:.3f} (max "
                          f"{audit['config']['max_near_copy_fraction']}), closer to train "
                          f"{s['closer_to_train_fraction']:.3f} (max {audit['config']['max_closer_to_train']})")
    if not audit["captions"]["passed"]:
        repeated = len(audit["captions"]["captions_with_verbatim_span"])
        failed.append(f"{repeated} captions repeat a training report verbatim")
    return failed


def image_key(path: Path, corpus: Path) -> str:
    """An image's name in the audit record: its path relative to the corpus folder."""
    return Path(os.path.relpath(path, corpus)).as_posix()


def run_audit(corpus: Path, data: DataConfig, cfg: AuditConfig, device: str = "auto", seed: int = 0,
              progress: bool = False, run_dir: Path | None = None) -> dict:
    """Audit ``corpus`` against the site's training and held-out rows (:func:`reference_records`;
    ``run_dir``: the generator's run folder); writes and returns the audit record (``passed`` is
    the verdict, ``failures`` the reasons when it failed)."""
    synthetic_records = load_manifest(corpus / MANIFEST).records
    train_records, heldout_records, heldout_source = reference_records(data, run_dir)
    image_sha256 = {image_key(r.image, corpus): sha256_file(r.image) for r in synthetic_records}
    syn_px, synthetic_records, syn_bad = pixel_features(synthetic_records, cfg.pixel_size, "synthetic images",
                                                        progress)
    train_px, train_records, train_bad = pixel_features(train_records, cfg.pixel_size, "training images", progress)
    held_px, heldout_records, held_bad = pixel_features(heldout_records, cfg.pixel_size, "held-out images", progress)
    unreadable = {"synthetic": syn_bad, "train": train_bad, "heldout": held_bad}
    pixel = space_checks(syn_px, train_px, held_px, "rms", cfg, seed)
    result: dict = {"corpus": str(corpus), "manifest_sha256": sha256_file(corpus / MANIFEST),
                    "image_sha256": image_sha256, "n_synthetic": len(synthetic_records), "n_train": len(train_records),
                    "n_heldout": len(heldout_records), "heldout": heldout_source, "unreadable": unreadable,
                    "config": cfg.__dict__, "pixel": pixel}
    spaces = [pixel]
    if cfg.checkpoint:
        from shared_model.model.checkpoint import load_checkpoint

        dev = resolve_device(device)
        model, model_cfg = load_checkpoint(cfg.checkpoint, dev)
        size = model_cfg.image.image_size
        embedded = [embed_records(model, recs, size, dev, progress=progress)
                    for recs in (synthetic_records, train_records, heldout_records)]
        for key, found in zip(unreadable, embedded):
            unreadable[key] += found.skipped  # a file that stopped decoding since the pixel pass
        syn, train, held = embedded
        embedding = space_checks(syn.embeddings, train.embeddings, held.embeddings, "cosine", cfg, seed)
        spaces.append(embedding)
        categories = sorted({get_category(label).key for r in syn.records for label in r.labels})
        result.update(embedding=embedding, label_fidelity={
            "synthetic": label_fidelity(model, syn.records, syn.embeddings, categories),
            "heldout_real": label_fidelity(model, held.records, held.embeddings, categories)},
            diversity={"synthetic": mean_pairwise_distance(syn.embeddings),
                       "heldout_real": mean_pairwise_distance(held.embeddings)})
    copied = verbatim_spans(synthetic_records, [r.report for r in train_records if r.report], cfg.verbatim_chars)
    result["captions"] = {"verbatim_span_chars": cfg.verbatim_chars, "captions_with_verbatim_span": copied,
                          "passed": not copied}
    write_closest_pairs(corpus / PAIRS_FILE, syn_px, train_px, pixel, cfg)
    for space in spaces:
        space.pop("_nearest"), space.pop("_distance")
    result["failures"] = failures(result)
    result["passed"] = not result["failures"]
    write_json_atomic(corpus / AUDIT_FILE, result)
    return result


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
