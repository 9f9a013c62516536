"""Adapters from public evaluation layouts to our manifest: a FLAIR-style CSV (one image column,
one column of categories) and a folder per class. They return manifest tables (pandas), which
``retina-data import`` writes next to the images so paths stay relative."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from shared_model.data.manifest import ManifestError, read_table

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
_IMAGE_COLUMNS = ("image", "image_path", "filename", "file")
_LABEL_COLUMNS = ("categories", "labels", "label", "category", "diagnosis")


def _pick(columns: list[str], options: tuple[str, ...], what: str, path: Path) -> str:
    for option in options:
        if option in columns:
            return option
    raise ManifestError(f"{path}: no {what} column (looked for {', '.join(options)}; found {', '.join(columns)})")


def _manifest_table(images: list[str], labels: list[str], patients: list[str], modality: str) -> pd.DataFrame:
    return pd.DataFrame({"image": images, "patient_id": patients, "eye": "", "modality": modality.upper(),
                         "study_id": "", "labels": labels, "report": "", "split": "test"})


def from_flair_csv(csv_path: str | Path, out_dir: str | Path, image_root: str | Path | None = None,
                   modality: str = "CFP") -> pd.DataFrame:
    """FLAIR-style CSV (``image`` + ``categories``/``label`` columns; categories may be a Python-style
    list or ``;``/``,``-separated) -> manifest rows with image paths relative to ``out_dir``."""
    csv_path = Path(csv_path)
    table = read_table(csv_path)
    image_col = _pick(list(table.columns), _IMAGE_COLUMNS, "image", csv_path)
    label_col = _pick(list(table.columns), _LABEL_COLUMNS, "label", csv_path)
    root = Path(image_root) if image_root else csv_path.parent
    if image_root is None and (csv_path.parent / "images").is_dir():
        root = csv_path.parent / "images"
    images = [os.path.relpath(root / name, out_dir) for name in table[image_col]]
    labels = [";".join(part.strip(" '\"") for part in raw.strip("[]").replace(",", ";").split(";")
                       if part.strip(" '\""))
              for raw in table[label_col]]
    patients = list(table["patient_id"]) if "patient_id" in table.columns else [Path(n).stem for n in table[image_col]]
    return _manifest_table(images, labels, patients, modality)


def from_class_folders(root: str | Path, out_dir: str | Path, modality: str = "CFP") -> pd.DataFrame:
    """``root/<class>/<image>`` -> manifest rows labelled by folder name (one patient per image)."""
    root = Path(root)
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ManifestError(f"{root}: no images in class sub-folders (expected {root}/<class>/<image>)")
    images = [os.path.relpath(p, out_dir) for p in files]
    return _manifest_table(images, [p.parent.name for p in files], [f"{p.parent.name}/{p.stem}" for p in files],
                           modality)
