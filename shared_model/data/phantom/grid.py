"""Labelled contact sheet of a phantom output: one column per class, CFP above its OCT."""

import csv
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from .categories import CATEGORIES


def _rows(phantom_dir: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    # Training sites first: the grid should show the typical look, not the held-out camera.
    manifests = sorted(phantom_dir.glob("*/manifest.csv"),
                       key=lambda m: (m.parent.name == "heldout", m.parent.name))
    for manifest in manifests:
        with manifest.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                row["_path"] = str(manifest.parent / row["image"])
                rows.append(row)
    return rows


Row = dict[str, str]


def _examples(rows: list[Row]) -> list[tuple[str, Row, Row | None]]:
    """First single-label CFP per class (training sites before held-out) and its OCT."""
    by_study = {(r["site"], r["study_id"]): r for r in rows if r["modality"] == "OCT"}
    picked = []
    for label in CATEGORIES:
        cfp = next((r for r in rows if r["modality"] == "CFP" and r["labels"] == label), None)
        if cfp is not None:
            picked.append((label, cfp, by_study.get((cfp["site"], cfp["study_id"]))))
    return picked


def make_grid(phantom_dir: str | Path, out_path: str | Path) -> Path:
    """Write a PNG grid of one example per class (CFP row, OCT row) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = _examples(_rows(Path(phantom_dir)))
    if not examples:
        raise FileNotFoundError(f"no manifest with single-label CFP rows under {phantom_dir}")
    n = len(examples)
    fig, axes = plt.subplots(2, n, figsize=(1.75 * n, 4.2), squeeze=False)
    for col, (label, cfp, oct_row) in enumerate(examples):
        for row, record in enumerate((cfp, oct_row)):
            ax = axes[row, col]
            ax.axis("off")
            if record is None:
                continue
            with Image.open(record["_path"]) as image:
                pixels = np.asarray(image)
            ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255)
            if row == 0:
                ax.set_title("\n".join(textwrap.wrap(label.replace("_", " "), 14)), fontsize=9)
    axes[0, 0].text(-0.08, 0.5, "CFP", transform=axes[0, 0].transAxes, rotation=90,
                    va="center", ha="right", fontsize=10)
    axes[1, 0].text(-0.08, 0.5, "OCT", transform=axes[1, 0].transAxes, rotation=90,
                    va="center", ha="right", fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
