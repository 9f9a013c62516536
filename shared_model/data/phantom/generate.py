"""Write a phantom federation to disk: per-site images and manifests, plus ``phantom.json``.

Layout::

    OUT/phantom.json                  generation parameters, domains, class priors
    OUT/site_0/manifest.csv           one row per 2-D image (columns: MANIFEST_COLUMNS)
    OUT/site_0/volumes.csv            one row per OCT volume (columns: VOLUME_COLUMNS)
    OUT/site_0/images/p00012_OD_CFP.png
    OUT/site_0/images/p00012_OD_OCT.png
    OUT/site_0/images/p00012_OD_OCT_volume.tif   (.dcm with volume_format "dicom")
    ...
    OUT/heldout/manifest.csv          the held-out evaluation site, all split "test"

Every eye with an OCT B-scan also gets a volume of ``volume_slices`` B-scans
(multi-page TIFF or multi-frame DICOM) unless ``volume_slices`` is 0; the
volumes have their own manifest so that ``manifest.csv`` is the same with or
without them.

Determinism: every random stream comes from ``SeedSequence(seed, spawn_key=...)``
keyed by (site, purpose, eye index), so a site's data do not depend on how
many images other sites have, and the same spec gives byte-identical files.
Crash safety: a site's images are written before its manifest, and the
manifest is written to a temporary file and renamed, so no manifest ever lists
a missing image.  ``phantom.json`` says ``"status": "complete"`` only at the end.
"""

import contextlib
import csv
import io
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from shared_model.atomic_files import write_text_atomic

from .categories import CATEGORIES, DME_COMORBID_GRADES, check_categories
from .domain import SiteDomain, sample_site_domain
from .fundus import render_fundus
from .oct import oct_shape, render_oct, render_oct_volume
from .reports import build_report

GENERATOR_NAME = "retinafl-phantom"
GENERATOR_VERSION = "1.0.0"
MARKER_FILE = "phantom.json"
HELDOUT_SITE = "heldout"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image", "patient_id", "eye", "modality", "study_id", "labels", "report", "split", "site",
)
VOLUME_COLUMNS: tuple[str, ...] = MANIFEST_COLUMNS + ("frames",)
VOLUME_FORMATS = {"tiff": ".tif", "dicom": ".dcm"}  # volume_format -> file suffix
MAX_VOLUME_SLICES = 64
_SITE_DIR = re.compile(r"^(site_\d+|heldout)$")


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate.  ``images_per_site`` and ``heldout_images`` count *eyes*: each eye
    has one CFP and, with probability ``oct_probability``, one OCT of the same eye."""

    n_sites: int = 3  # training sites; the held-out site comes on top
    images_per_site: int = 200  # eyes per training site
    heldout_images: int = 100  # eyes at the held-out site; 0 = no held-out site
    image_size: int = 64  # CFP is size x size; OCT is size wide, size * 496 / 512 high
    oct_probability: float = 1.0
    label_skew_alpha: float = 0.5  # Dirichlet concentration of site class priors; large = balanced
    seed: int = 0
    classes: tuple[str, ...] = CATEGORIES
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test by patient
    two_eye_probability: float = 0.5  # chance that a patient contributes both eyes
    dme_comorbidity: float = 0.2  # chance that a moderate/severe/proliferative DR eye also has DME
    min_class_prior: float = 0.01  # floor on every class prior so each class appears at every site
    volume_slices: int = 16  # B-scans per OCT volume; 0 = no volumes
    volume_format: str = "tiff"  # "tiff" (multi-page) or "dicom" (multi-frame)

    def __post_init__(self) -> None:
        check_categories(self.classes)
        if not self.classes:
            raise ValueError("classes must not be empty")
        if self.n_sites < 1 or self.images_per_site < 1 or self.heldout_images < 0:
            raise ValueError("need n_sites >= 1, images_per_site >= 1 and heldout_images >= 0")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {self.image_size}")
        if not 0.0 <= self.oct_probability <= 1.0 or self.label_skew_alpha <= 0:
            raise ValueError("need 0 <= oct_probability <= 1 and label_skew_alpha > 0")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(
                f"split_fractions must be >= 0 and sum to 1, got {self.split_fractions}")
        if self.min_class_prior * len(self.classes) >= 1.0:
            raise ValueError("min_class_prior times the number of classes must stay below 1")
        if self.volume_slices != 0 and not 2 <= self.volume_slices <= MAX_VOLUME_SLICES:
            raise ValueError(f"volume_slices must be 0 (no volumes) or 2..{MAX_VOLUME_SLICES}, "
                             f"got {self.volume_slices}")
        if self.volume_format not in VOLUME_FORMATS:
            raise ValueError(f"volume_format must be one of {sorted(VOLUME_FORMATS)}, "
                             f"got {self.volume_format!r}")


@dataclass(frozen=True)
class EyePlan:
    """One eye to render: its index at the site, patient, laterality, labels and split."""

    index: int
    patient: int
    eye: str
    labels: tuple[str, ...]
    split: str
    with_oct: bool


@dataclass(frozen=True)
class SitePlan:
    """Everything about one site that is decided before rendering."""

    name: str
    heldout: bool
    domain: SiteDomain
    class_prior: dict[str, float]
    eyes: tuple[EyePlan, ...]

    @property
    def n_patients(self) -> int:
        """Number of distinct patients."""
        return len({e.patient for e in self.eyes})

    def class_counts(self) -> dict[str, int]:
        """Eyes per label (an eye with two labels counts for both)."""
        counts = {label: 0 for label in self.class_prior}
        for eye in self.eyes:
            for label in eye.labels:
                counts[label] = counts.get(label, 0) + 1
        return counts


@dataclass(frozen=True)
class SiteSummary:
    """What was written for one site."""

    name: str
    manifest: Path
    n_patients: int
    n_images: int  # 2-D images, the rows of ``manifest``
    class_counts: dict[str, int] = field(default_factory=dict)
    volumes: Path | None = None  # the volume manifest; None when the spec has no volumes
    n_volumes: int = 0


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`generate_phantom` wrote, and how long it took."""

    out_dir: Path
    sites: tuple[SiteSummary, ...]
    seconds: float

    @property
    def n_images(self) -> int:
        """2-D image files written over all sites."""
        return sum(site.n_images for site in self.sites)

    @property
    def n_volumes(self) -> int:
        """OCT volume files written over all sites."""
        return sum(site.n_volumes for site in self.sites)


def site_names(spec: PhantomSpec) -> list[str]:
    """``site_0`` .. ``site_{n-1}``, then ``heldout`` when the spec has a held-out site."""
    names = [f"site_{k}" for k in range(spec.n_sites)]
    return names + ([HELDOUT_SITE] if spec.heldout_images > 0 else [])


def _seed(spec: PhantomSpec, name: str, *key: int) -> np.random.SeedSequence:
    site_key = (1,) if name == HELDOUT_SITE else (0, int(name.split("_")[1]))
    return np.random.SeedSequence(spec.seed, spawn_key=site_key + key)


def _allocate(prior: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``prior * n`` (largest remainder), with at
    least one per class when ``n`` allows, so rare classes never vanish from a site."""
    raw = prior * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= len(prior):
        for i in np.flatnonzero(counts == 0):
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return counts


def plan_site(spec: PhantomSpec, name: str) -> SitePlan:
    """Decide a site's domain, class prior, patients, eyes, labels and splits (no rendering)."""
    heldout = name == HELDOUT_SITE
    domain = sample_site_domain(np.random.default_rng(_seed(spec, name, 0)), heldout=heldout)
    rng = np.random.default_rng(_seed(spec, name, 1))
    k = len(spec.classes)
    if heldout:
        prior = np.full(k, 1.0 / k)
    else:
        prior = spec.min_class_prior + (1.0 - k * spec.min_class_prior) * rng.dirichlet(
            np.full(k, spec.label_skew_alpha))
    n_eyes = spec.heldout_images if heldout else spec.images_per_site
    primary = rng.permutation(np.repeat(np.arange(k), _allocate(prior, n_eyes)))

    patients: list[list[str]] = []
    assigned = 0
    while assigned < n_eyes:
        both = n_eyes - assigned >= 2 and rng.uniform() < spec.two_eye_probability
        patients.append(["OD", "OS"] if both else [str(rng.choice(["OD", "OS"]))])
        assigned += len(patients[-1])

    if heldout:
        splits = ["test"] * len(patients)
    else:
        n = len(patients)
        n_val = round(spec.split_fractions[1] * n)
        n_test = round(spec.split_fractions[2] * n)
        if n >= 3:  # every split non-empty when fractions ask for it
            n_val = max(n_val, 1 if spec.split_fractions[1] > 0 else 0)
            n_test = max(n_test, 1 if spec.split_fractions[2] > 0 else 0)
        order = rng.permutation(n)
        splits = [""] * n
        for rank, p in enumerate(order):
            splits[p] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"

    eyes: list[EyePlan] = []
    for p, eye_names in enumerate(patients):
        for eye in eye_names:
            i = len(eyes)
            labels = (spec.classes[int(primary[i])],)
            eye_rng = np.random.default_rng(_seed(spec, name, 2, i))
            if (labels[0] in DME_COMORBID_GRADES and "dme" in spec.classes
                    and eye_rng.uniform() < spec.dme_comorbidity):
                labels = labels + ("dme",)
            with_oct = bool(eye_rng.uniform() < spec.oct_probability)
            eyes.append(EyePlan(i, p, eye, labels, splits[p], with_oct))
    return SitePlan(name, heldout, domain,
                    {c: round(float(q), 6) for c, q in zip(spec.classes, prior)}, tuple(eyes))


def _read_marker(out_dir: Path) -> dict | None:
    try:
        marker = json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME
    return marker if ours else None


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_marker(out_dir)
    if previous is None:
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty and is not a phantom output (no {MARKER_FILE} from "
                f"{GENERATOR_NAME}); choose an empty directory or pass overwrite=True "
                "(--overwrite)")
        return
    # Regenerating over our own output: drop the old sites so no stale image or manifest stays.
    for site in previous.get("sites", []):
        name = str(site.get("name", ""))
        if _SITE_DIR.match(name) and (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)


def _marker(spec: PhantomSpec, plans: list[SitePlan], status: str) -> str:
    height, width = oct_shape(spec.image_size)
    volumes = spec.volume_slices > 0
    body = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "status": status,
        "spec": asdict(spec),
        "cfp_shape": [spec.image_size, spec.image_size],
        "oct_shape": [height, width],
        "volume_shape": [spec.volume_slices, height, width] if volumes else None,
        "conventions": {
            "laterality": "OD: optic disc right of the fovea in the image; OS: left",
            "oct_labels": "an OCT carries the labels of its eye, also for diseases it cannot show",
            "images_per_site": "counts eyes; each eye has one CFP and optionally one OCT",
            "study_id": "one per eye and visit: pairs the CFP and OCT of that eye",
            "volumes": "each eye with an OCT also has an OCT volume (volumes.csv, frames = "
                       "slices): horizontal B-scans from superior (slice 0) to inferior, "
                       "centred on the fovea, same eye geometry in every slice; focal "
                       "lesions show in some slices only, diffuse signs in all",
        },
        "sites": [{
            "name": plan.name,
            "heldout": plan.heldout,
            "manifest": f"{plan.name}/manifest.csv",
            "volumes": f"{plan.name}/volumes.csv" if volumes else None,
            "n_volumes": sum(e.with_oct for e in plan.eyes) if volumes else 0,
            "n_patients": plan.n_patients,
            "n_eyes": len(plan.eyes),
            "n_images": len(plan.eyes) + sum(e.with_oct for e in plan.eyes),
            "class_prior": plan.class_prior,
            "class_counts": plan.class_counts(),
            "domain": plan.domain.to_dict(),
        } for plan in plans],
    }
    return json.dumps(body, indent=2) + "\n"


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]phantom[/] {task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn())


def _save_tiff(path: Path, volume: np.ndarray) -> None:
    # Uncompressed: speckle barely compresses (deflate saves little space and is slower).
    pages = [Image.fromarray(scan) for scan in volume]
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:], compression="raw")


def _save_dicom(path: Path, volume: np.ndarray, spec: PhantomSpec, common: dict[str, str]) -> None:
    """Multi-frame Ophthalmic Tomography DICOM; UIDs derive from the seed and study, so the
    same spec writes the same bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, OphthalmicTomographyImageStorage, generate_uid

    def uid(purpose: str) -> str:
        return generate_uid(entropy_srcs=[GENERATOR_NAME, str(spec.seed), common["study_id"],
                                          purpose])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = OphthalmicTomographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid("instance")
    ds.SOPClassUID = OphthalmicTomographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.Modality, ds.Manufacturer = "OPT", GENERATOR_NAME
    ds.PatientID = ds.PatientName = common["patient_id"]
    ds.Laterality = ds.ImageLaterality = "R" if common["eye"] == "OD" else "L"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.set_pixel_data(volume, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def _csv(columns: tuple[str, ...], rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def render_site(spec: PhantomSpec, plan: SitePlan, site_dir: Path, advance=None) -> SiteSummary:
    """Render and write one site's images and volumes, then its manifests; ``advance()`` is
    called per eye."""
    images = site_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    volume_rows: list[dict[str, str]] = []
    for eye in plan.eyes:
        cfp_rng, oct_rng, report_rng = (np.random.default_rng(s) for s in
                                        _seed(spec, plan.name, 3, eye.index).spawn(3))
        patient_id = f"{plan.name}-p{eye.patient:05d}"
        stem = f"p{eye.patient:05d}_{eye.eye}"
        common = {"patient_id": patient_id, "eye": eye.eye, "study_id": f"{patient_id}-{eye.eye}",
                  "labels": ";".join(eye.labels), "split": eye.split, "site": plan.name}
        renders = [("CFP", render_fundus, cfp_rng)]
        if eye.with_oct:
            renders.append(("OCT", render_oct, oct_rng))
        for modality, render, rng in renders:
            pixels, findings = render(rng, eye.labels, eye.eye, spec.image_size, plan.domain)
            relative = f"images/{stem}_{modality}.png"
            # Level 3: noisy images compress barely better at 6, which is much slower.
            Image.fromarray(pixels).save(site_dir / relative, format="PNG", compress_level=3)
            rows.append({"image": relative, "modality": modality,
                         "report": build_report(findings, report_rng), **common})
        if eye.with_oct and spec.volume_slices > 0:
            # Own spawn key (4): the streams of the 2-D images above stay as they were.
            volume_rng, volume_report_rng = (np.random.default_rng(s) for s in
                                             _seed(spec, plan.name, 4, eye.index).spawn(2))
            volume, findings = render_oct_volume(volume_rng, eye.labels, eye.eye,
                                                 spec.image_size, plan.domain, spec.volume_slices)
            relative = f"images/{stem}_OCT_volume{VOLUME_FORMATS[spec.volume_format]}"
            if spec.volume_format == "dicom":
                _save_dicom(site_dir / relative, volume, spec, common)
            else:
                _save_tiff(site_dir / relative, volume)
            volume_rows.append({"image": relative, "modality": "OCT",
                                "report": build_report(findings, volume_report_rng),
                                "frames": str(len(volume)), **common})
        if advance is not None:
            advance()
    write_text_atomic(site_dir / "manifest.csv", _csv(MANIFEST_COLUMNS, rows))
    volumes = None
    if spec.volume_slices > 0:
        volumes = site_dir / "volumes.csv"
        write_text_atomic(volumes, _csv(VOLUME_COLUMNS, volume_rows))
    return SiteSummary(plan.name, site_dir / "manifest.csv", plan.n_patients, len(rows),
                       plan.class_counts(), volumes, len(volume_rows))


def generate_phantom(spec: PhantomSpec, out_dir: str | Path, *, overwrite: bool = False,
                     progress: bool = True) -> PhantomSummary:
    """Generate the phantom federation described by ``spec`` into ``out_dir``.

    Refuses a non-empty ``out_dir`` that is not an earlier phantom output unless
    ``overwrite``; an earlier phantom output is replaced site by site.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    plans = [plan_site(spec, name) for name in site_names(spec)]
    write_text_atomic(out / MARKER_FILE, _marker(spec, plans, "in_progress"))
    sites: list[SiteSummary] = []
    with _progress(progress) as bar:
        for plan in plans:
            advance = None
            if bar is not None:
                task = bar.add_task(plan.name, total=len(plan.eyes))
                advance = lambda task=task: bar.advance(task)  # noqa: E731
            sites.append(render_site(spec, plan, out / plan.name, advance))
    write_text_atomic(out / MARKER_FILE, _marker(spec, plans, "complete"))
    return PhantomSummary(out, tuple(sites), time.perf_counter() - start)
