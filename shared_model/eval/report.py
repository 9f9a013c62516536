"""Evaluation report: ``metrics.json``, confusion-matrix PNGs, ``summary.md``, terminal table.

Tables follow FLAIR's reporting (arXiv 2308.07898): ACA first, then accuracy,
macro-F1, AUC and kappa; probes as mean ± std over folds or trials; retrieval
as Recall@K.

The ``results`` dict (every section optional, names are free-form strings)::

    {
      "zero_shot":    {dataset: ClassificationMetrics},   # metrics.classification_metrics
      "linear_probe": {dataset: ProbeCVResult              # linear_probe.linear_probe_cv
                                | ProbeMetrics},           # or fit_probe_and_score
      "linear_probe_features": {dataset: ProbeCVResult},  # the same on the tower's pooled features
      "kshot":        {name: KShotResult},                # linear_probe.kshot_probe; k is inside,
                                                          # so name e.g. "phantom_fundus/k=5"
      "retrieval":    {dataset: RetrievalMetrics},        # retrieval.retrieval_metrics
      "cross_modal":  {"set/A-B": RetrievalMetrics        # image_to_text = A->B, text_to_image = B->A
                                  + {"modalities": [A, B]}},
      ...                                                 # any other JSON value (e.g. "meta":
    }                                                     # {"round": 3}) goes to metrics.json only

Entries are the dicts the evaluator functions return, unchanged: plain JSON
types, ``None`` where a metric is undefined.
"""

import io
import json
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from shared_model.atomic_files import write_bytes_atomic
from shared_model.eval.metrics import SCALAR_METRICS

CLASSIFICATION_SECTIONS = {"zero_shot": "zero-shot", "linear_probe": "linear probe",
                           "linear_probe_features": "probe, tower features", "kshot": "k-shot"}
CLASSIFICATION_HEADERS = ("task", "dataset", "n", "ACA", "acc", "macro-F1", "AUC", "kappa")
MISSING = "–"


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


# The terminal's 80 columns: ACA with its spread, macro-F1, AUC and kappa as means (every figure
# stays in summary.md and metrics.json).
COMPACT_HEADERS = ("task", "dataset", "n", "ACA", "F1", "AUC", "κ")
COMPACT_METRICS = ("aca", "macro_f1", "auc", "kappa")
COMPACT_SECTIONS = {"zero_shot": "zero-shot", "linear_probe": "probe", "linear_probe_features": "probe, tower",
                    "kshot": "k-shot"}


def _metric_cell(entry: dict, key: str, spread: str | None = " ± ") -> str:
    """``entry``'s ``key``: probe summaries as mean ± std over folds or trials (``spread`` the
    separator; None: the mean alone)."""
    if "mean" in entry:
        mean, std = entry["mean"][key], entry["std"][key]
        if mean is None or spread is None:
            return _fmt(mean)
        return f"{mean:.3f}{spread}{std:.3f}"
    return _fmt(entry[key])


def classification_rows(results: dict, compact: bool = False) -> list[list[str]]:
    """One row per classification entry (zero-shot, probes, k-shot): the CLASSIFICATION_HEADERS
    cells, or with ``compact`` the COMPACT_HEADERS ones."""
    rows = []
    for section, label in (COMPACT_SECTIONS if compact else CLASSIFICATION_SECTIONS).items():
        for dataset, entry in results.get(section, {}).items():
            task = label
            if "k" in entry:
                task = f"{entry['k']}-shot ×{entry['n_trials']}"
            elif "n_splits" in entry:
                task = f"{label} {entry['n_splits']}-fold" if compact else f"{label} ({entry['n_splits']}-fold)"
            if compact:
                cells = [_metric_cell(entry, key, "±" if key == "aca" else None) for key in COMPACT_METRICS]
            else:
                cells = [_metric_cell(entry, key) for key in SCALAR_METRICS]
            rows.append([task, dataset, str(entry["n"]), *cells])
    return rows


def _directions(entry: dict) -> dict[str, str]:
    """Labels of a retrieval entry's two directions: image/text, or its two modalities."""
    if "modalities" in entry:
        a, b = entry["modalities"]
        return {"image_to_text": f"{a}→{b}", "text_to_image": f"{b}→{a}"}
    return {"image_to_text": "image→text", "text_to_image": "text→image"}


def _retrieval_table(results: dict, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Retrieval rows, image-text then cross-modal; ``compact`` (the terminal's 80 columns)
    leaves out the median rank."""
    entries = {**results.get("retrieval", {}), **results.get("cross_modal", {})}
    recall_keys = list(dict.fromkeys(key for entry in entries.values() for d in _directions(entry)
                                     for key in entry[d]["recall"]))
    headers = ["dataset", "direction", "n" if compact else "queries", *recall_keys, "mean rank"]
    headers += [] if compact else ["median rank"]
    rows = []
    for dataset, entry in entries.items():
        for direction, label in _directions(entry).items():
            m = entry[direction]
            rows.append(
                [dataset, label, str(m["n_queries"])]
                + [_fmt(m["recall"].get(key)) for key in recall_keys]
                + [f"{m['mean_rank']:.1f}"] + ([] if compact else [f"{m['median_rank']:.1f}"])
            )
    return headers, rows


def render_table(results: dict, title: str | None = None) -> Table:
    """Rich table of the results (classification rows, then retrieval rows) for the terminal,
    narrow enough for 80 columns (:data:`COMPACT_HEADERS`)."""
    outer = Table.grid(padding=(1, 0))
    classification = classification_rows(results, compact=True)
    if classification:
        table = Table(*COMPACT_HEADERS, title=title)
        for row in classification:
            table.add_row(*row)
        outer.add_row(table)
    headers, retrieval = _retrieval_table(results, compact=True)
    if retrieval:
        table = Table(*headers, title="retrieval")
        for row in retrieval:
            table.add_row(*row)
        outer.add_row(table)
    return outer


def _markdown_table(headers, rows) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


def confusion_figure(cm: list[list[int]], class_names: list[str], title: str) -> Figure:
    """Confusion matrix coloured by per-class recall, annotated with counts."""
    cm = np.asarray(cm)
    n = len(class_names)
    # Colour = row-normalised (per-class recall), so rare classes stay visible;
    # the annotation is the raw count.
    support = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    size = max(4.0, 0.55 * n + 2.5)
    fontsize = 10 if n <= 8 else 7
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(n), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def _confusion_png(cm: list[list[int]], class_names: list[str], title: str) -> bytes:
    buffer = io.BytesIO()
    confusion_figure(cm, class_names, title).savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def write_report(results: dict, out_dir: Path, title: str) -> list[Path]:
    """Write ``metrics.json``, ``confusion_<section>_<dataset>.png`` and ``summary.md`` to ``out_dir``.

    ``results`` is described in the module docstring. Every file is written
    atomically (temp file + ``os.replace``); ``metrics.json`` is strict JSON
    (no NaN). A confusion matrix is drawn for every entry that has one
    (zero-shot, probes; k-shot trials are not pooled). Returns the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    metrics_path = out_dir / "metrics.json"
    write_bytes_atomic(metrics_path, json.dumps(results, indent=2, allow_nan=False).encode())
    written.append(metrics_path)

    images = []
    for section, label in CLASSIFICATION_SECTIONS.items():
        for dataset, entry in results.get(section, {}).items():
            if "confusion_matrix" not in entry:
                continue
            path = out_dir / f"confusion_{section}_{_slug(dataset)}.png"
            write_bytes_atomic(path, _confusion_png(entry["confusion_matrix"], entry["class_names"],
                                                    f"{label}: {dataset}"))
            images.append(path)
    written.extend(images)

    parts = [f"# {title}"]
    classification = classification_rows(results)
    if classification:
        parts += ["## Classification", _markdown_table(CLASSIFICATION_HEADERS, classification)]
    headers, retrieval = _retrieval_table(results)
    if retrieval:
        parts += ["## Retrieval", _markdown_table(headers, retrieval)]
    if images:
        parts += ["## Confusion matrices", "\n".join(f"![{p.stem}]({p.name})" for p in images)]
    summary_path = out_dir / "summary.md"
    write_bytes_atomic(summary_path, ("\n\n".join(parts) + "\n").encode())
    written.append(summary_path)
    return written
