"""The site manifest: one table (CSV in UTF-8, or Parquet) per data set, one row per image or volume.

Columns: ``image`` (path relative to the manifest), ``patient_id``, ``eye`` (OD/OS, optional),
``modality`` (CFP, OCT, FFA, FAF, ICGA, UWF, ...), ``study_id`` (optional), ``labels``
(``;``-separated categories of the expert-knowledge dictionary), ``report`` (free text),
``split`` (train/val/test, optional: train), ``frames`` (optional: the number of B-scans of a
volume, e.g. a multi-frame DICOM or multi-page TIFF OCT; empty for a 2-D image). Extra columns
are kept as ``extra``.

Validation reports one issue per bad row and field, naming the file and row, plus a summary;
strict loading refuses a manifest with issues, lenient loading drops those rows and counts them.
Loading checks that each image file exists; :func:`unreadable_images` also opens every one.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from shared_model.config import DataConfig
from shared_model.data.readers import ImageReadError, read_frames
from shared_model.prompts.captions import KNOWN_MODALITIES
from shared_model.prompts.knowledge import UnknownCategoryError, normalise_label

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "patient_id", "modality", "labels", "report")
OPTIONAL_COLUMNS = ("eye", "study_id", "split", "frames")
SPLITS = ("train", "val", "test")
_EYES = {"od": "OD", "r": "OD", "right": "OD", "os": "OS", "l": "OS", "left": "OS", "": ""}


@dataclass(frozen=True)
class ManifestIssue:
    """One problem with one field of one row (row numbers count data rows from 1)."""

    file: str
    row: int
    field: str
    message: str
    kind: str

    def __str__(self) -> str:
        where = f"{self.file}: row {self.row}" if self.row else self.file
        return f"{where}, field '{self.field}': {self.message}"


class ManifestError(ValueError):
    """A manifest cannot be used; ``issues`` lists every problem found."""

    def __init__(self, message: str, issues: list[ManifestIssue] | None = None):
        super().__init__(message)
        self.issues = issues or []


@dataclass(frozen=True)
class Record:
    """One validated manifest row."""

    image: Path
    patient_id: str
    eye: str
    modality: str
    study_id: str
    labels: tuple[str, ...]
    report: str
    split: str
    row: int
    source: str
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    frames: int = 1  # B-scans of a volume; 1 = a 2-D image

    @property
    def is_volume(self) -> bool:
        """Whether the row is a volume (``frames`` > 1), embedded through the slice adapter."""
        return self.frames > 1


@dataclass
class Manifest:
    """A validated manifest: the usable records and the issues of the rows left out."""

    path: Path
    records: list[Record]
    issues: list[ManifestIssue]
    n_rows: int

    def select(self, split: str | None) -> list[Record]:
        """Records of one split (``None``: all)."""
        return [r for r in self.records if split is None or r.split == split]


def summarise_issues(issues: list[ManifestIssue], n_rows: int) -> str:
    """One line: how many rows are bad, by kind of problem."""
    bad_rows = len({(i.file, i.row) for i in issues})
    kinds = Counter(i.kind for i in issues)
    return f"{bad_rows} of {n_rows} rows invalid (" + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + ")"


def read_utf8(path: Path) -> str:
    """The text of a CSV manifest; a byte that is not UTF-8 raises :class:`ManifestError` naming
    its line, column and byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ManifestError(f"{path}: line {line} (the header is line 1), column {column} (byte offset {exc.start}): "
                            f"byte 0x{data[exc.start]:02x} is not UTF-8; a manifest must be UTF-8 text: re-save it "
                            "as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from exc


def read_table(path: Path) -> pd.DataFrame:
    """Read a manifest table as strings (empty cells are empty strings)."""
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    source = path if parquet else io.StringIO(read_utf8(path))
    try:
        if parquet:
            table = pd.read_parquet(source)
            table = table.astype(object).where(table.notna(), "").astype(str)
        else:
            table = pd.read_csv(source, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ManifestError(f"{path}: cannot be parsed as a manifest table ({type(exc).__name__}: {exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _check_row(values: dict, row: int, root: Path, source: str) -> tuple[Record | None, list[ManifestIssue]]:
    issues: list[ManifestIssue] = []

    def bad(fld: str, message: str, kind: str) -> None:
        issues.append(ManifestIssue(source, row, fld, message, kind))

    image = values["image"].strip()
    path = (root / image) if image else root
    if not image:
        bad("image", "empty path", "empty image path")
    elif not path.is_file():
        bad("image", f"file not found: {path}", "missing file")
    modality = values["modality"].strip().upper()
    if modality not in KNOWN_MODALITIES:
        bad("modality", f"unknown modality {values['modality']!r} (known: {', '.join(sorted(KNOWN_MODALITIES))})",
            "unknown modality")
    eye = _EYES.get(values.get("eye", "").strip().lower())
    if eye is None:
        bad("eye", f"unknown eye {values['eye']!r} (use OD/OS, R/L or right/left)", "unknown eye")
    labels: list[str] = []
    for raw in filter(None, (part.strip() for part in values["labels"].split(";"))):
        try:
            labels.append(normalise_label(raw))
        except UnknownCategoryError as exc:
            bad("labels", str(exc), "unknown label")
    report = values["report"].strip()
    if not values["labels"].strip() and not report:
        bad("labels", "both labels and report are empty: the row has no supervision", "no labels or report")
    if not values["patient_id"].strip():
        bad("patient_id", "empty patient id", "empty patient id")
    split = values.get("split", "").strip().lower() or "train"
    if split not in SPLITS:
        bad("split", f"unknown split {values['split']!r} (use {', '.join(SPLITS)})", "unknown split")
    frames_text = values.get("frames", "").strip()
    frames = 1
    if frames_text:
        if not frames_text.isdigit() or int(frames_text) < 1:
            bad("frames", f"frames must be a positive whole number of B-scans, got {values['frames']!r}", "bad frames")
        else:
            frames = int(frames_text)
    if issues:
        return None, issues
    extra = {k: v for k, v in values.items() if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    return Record(path, values["patient_id"].strip(), eye, modality, values.get("study_id", "").strip(),
                  tuple(dict.fromkeys(labels)), report, split, row, source, extra, frames), []


def load_manifest(path: str | Path, strict: bool = True) -> Manifest:
    """Read and validate a manifest; strict mode raises :class:`ManifestError` listing every issue."""
    path = Path(path)
    return validate_table(read_table(path), path, path.parent, strict)


def validate_table(table: pd.DataFrame, path: Path, root: Path, strict: bool = True) -> Manifest:
    """Validate manifest rows whose image paths are relative to ``root``; ``path`` names the source in messages."""
    source = str(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; a manifest needs "
                            f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")
    records, issues = [], []
    first_row: dict[str, int] = {}
    for i, values in enumerate(table.to_dict("records"), start=1):
        record, row_issues = _check_row(values, i, root, source)
        image = values["image"].strip()
        if image and image in first_row:
            row_issues.append(ManifestIssue(source, i, "image",
                                            f"duplicate path {image!r} (first at row {first_row[image]})",
                                            "duplicate path"))
            record = None
        first_row.setdefault(image, i)
        issues.extend(row_issues)
        if record is not None:
            records.append(record)
    manifest = Manifest(path, records, issues, len(table))
    if issues:
        summary = summarise_issues(issues, len(table))
        if strict:
            shown = "\n  ".join(str(i) for i in issues[:50])
            more = f"\n  ... and {len(issues) - 50} more" if len(issues) > 50 else ""
            raise ManifestError(f"{path}: {summary}\n  {shown}{more}", issues)
        for issue in issues:
            log.warning("skipping row: %s", issue)
        log.warning("%s: %s; %d rows kept", path, summary, len(records))
    if not records:
        raise ManifestError(f"{path}: no usable rows", issues)
    return manifest


def unreadable_images(records: list[Record], size_hint: int | None = 64) -> list[str]:
    """Open every record's image (all frames of a volume) with the project's reader; one line per
    unreadable file, naming its manifest, row and the reason (``size_hint``: JPEG draft decoding)."""
    problems = []
    for record in records:
        try:
            read_frames(record, size_hint)
        except ImageReadError as exc:
            problems.append(str(ManifestIssue(record.source, record.row, "image", str(exc), "unreadable image")))
    return problems


def expand_manifest_paths(patterns: list[str]) -> list[Path]:
    """Expand globs in manifest paths (sorted, so the order is reproducible); a pattern matching nothing is an error."""
    paths: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            anchor = Path(pattern).anchor or "."
            matches = sorted(Path(anchor).glob(str(Path(pattern).relative_to(anchor))))
            if not matches:
                raise ManifestError(f"{pattern}: no manifest matches this pattern")
            paths.extend(matches)
        else:
            paths.append(Path(pattern))
    return paths


def load_training_records(cfg: DataConfig) -> list[Record]:
    """Records of ``cfg.split`` from every manifest (globs expanded, validated)."""
    records: list[Record] = []
    for path in expand_manifest_paths(cfg.manifests):
        records.extend(load_manifest(path, strict=cfg.strict).select(cfg.split))
    if not records:
        raise ValueError(f"no '{cfg.split}' rows in data.manifests={cfg.manifests}")
    return records
