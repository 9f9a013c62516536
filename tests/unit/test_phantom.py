"""Phantom retina generator: determinism, manifest layout, label skew, lesion ground truth,
OCT volumes, and likeness to the real fundus photographs and OCT B-scans in shared/data/real."""

import csv
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from shared_model.cli.data import main
from shared_model.config import PhantomDataConfig
from shared_model.data import embedded
from shared_model.data.phantom import (
    CATEGORIES,
    MANIFEST_COLUMNS,
    NEUTRAL_DOMAIN,
    VOLUME_COLUMNS,
    PhantomSpec,
    build_report,
    generate_phantom,
    oct_shape,
    plan_site,
    render_fundus,
    render_oct,
    render_oct_volume,
    sample_site_domain,
    slice_offsets,
)
from shared_model.data.phantom import generate as generate_module
from shared_model.data.phantom.stats import (
    fov_fraction,
    fov_mean_intensity,
    fov_mean_rgb,
    grey_mean_std,
    is_grey,
    load_image,
    local_contrast,
    pale_fraction,
    yellow_fraction,
)
from shared_model.data.readers import read_image

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
SMALL = PhantomSpec(n_sites=2, images_per_site=44, heldout_images=22, image_size=64, seed=7)


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _render_many(labels: tuple[str, ...], n: int, size: int = 64) -> list[np.ndarray]:
    return [render_fundus(np.random.default_rng(1000 + i), labels, "OD" if i % 2 else "OS", size)[0]
            for i in range(n)]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    generate_phantom(SMALL, out, progress=False)
    return out


# --- determinism ---------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    spec = PhantomSpec(n_sites=1, images_per_site=12, heldout_images=11, image_size=32, seed=3)
    generate_phantom(spec, tmp_path / "a", progress=False)
    generate_phantom(spec, tmp_path / "b", progress=False)
    other = PhantomSpec(n_sites=1, images_per_site=12, heldout_images=11, image_size=32, seed=4)
    generate_phantom(other, tmp_path / "c", progress=False)
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a if k.endswith(".png"))
    assert a["site_0/manifest.csv"] != c["site_0/manifest.csv"]


def test_a_site_does_not_depend_on_the_other_sites():
    one = PhantomSpec(n_sites=1, images_per_site=20, heldout_images=15, seed=5)
    three = PhantomSpec(n_sites=3, images_per_site=20, heldout_images=15, seed=5)
    assert plan_site(one, "site_0") == plan_site(three, "site_0")
    assert plan_site(one, "heldout") == plan_site(three, "heldout")


# --- manifest, splits, label skew ------------------------------------------------------


def test_manifest_columns_images_and_pairs(phantom):
    marker = json.loads((phantom / "phantom.json").read_text())
    assert marker["status"] == "complete" and marker["generator"] == "retinafl-phantom"
    assert [s["name"] for s in marker["sites"]] == ["site_0", "site_1", "heldout"]
    for site in marker["sites"]:
        columns, rows = _read_manifest(phantom / site["manifest"])
        assert columns == list(MANIFEST_COLUMNS)
        assert len(rows) == site["n_images"] == 2 * site["n_eyes"]  # oct_probability 1.0
        studies = defaultdict(set)
        for row in rows:
            path = phantom / site["name"] / row["image"]
            assert path.is_file(), row["image"]
            assert row["site"] == site["name"] and row["eye"] in ("OD", "OS")
            assert all(label in CATEGORIES for label in row["labels"].split(";"))
            assert row["report"].strip()
            studies[row["study_id"]].add((row["modality"], row["labels"], row["patient_id"]))
            with Image.open(path) as image:
                expected = (64, 64) if row["modality"] == "CFP" else oct_shape(64)[::-1]
                assert image.size == expected
                assert image.mode == ("RGB" if row["modality"] == "CFP" else "L")
        for pair in studies.values():  # one CFP and one OCT per eye, same labels and patient
            assert {m for m, _, _ in pair} == {"CFP", "OCT"}
            assert len({(labels, patient) for _, labels, patient in pair}) == 1


def test_split_is_by_patient(phantom):
    for name in ("site_0", "site_1"):
        _, rows = _read_manifest(phantom / name / "manifest.csv")
        splits = defaultdict(set)
        for row in rows:
            splits[row["patient_id"]].add(row["split"])
        assert all(len(s) == 1 for s in splits.values())
        assert {s.pop() for s in splits.values()} == {"train", "val", "test"}
    _, rows = _read_manifest(phantom / "heldout" / "manifest.csv")
    assert {row["split"] for row in rows} == {"test"}


def test_every_class_at_every_site_and_label_skew_differs(phantom):
    marker = json.loads((phantom / "phantom.json").read_text())
    priors = {}
    for site in marker["sites"]:
        _, rows = _read_manifest(phantom / site["manifest"])
        present = {label for row in rows for label in row["labels"].split(";")}
        assert present == set(CATEGORIES), site["name"]
        priors[site["name"]] = np.array([site["class_prior"][c] for c in CATEGORIES])
    assert np.abs(priors["site_0"] - priors["site_1"]).sum() > 0.3
    assert np.allclose(priors["heldout"], 1.0 / len(CATEGORIES))
    domains = [json.dumps(s["domain"], sort_keys=True) for s in marker["sites"]]
    assert len(set(domains)) == len(domains)


# --- output directory safety -------------------------------------------------------------


def test_refuses_foreign_directory_and_replaces_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    tiny = PhantomSpec(n_sites=2, images_per_site=3, heldout_images=0, image_size=32)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_phantom(tiny, foreign, progress=False)
    generate_phantom(tiny, foreign, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"

    own = tmp_path / "own"
    generate_phantom(tiny, own, progress=False)
    smaller = PhantomSpec(n_sites=1, images_per_site=3, heldout_images=0, image_size=32)
    generate_phantom(smaller, own, progress=False)  # a previous phantom output: allowed
    assert not (own / "site_1").exists()


def test_cli_generates_and_draws_grid(tmp_path):
    out = tmp_path / "cli"
    assert main(["phantom", "--out", str(out), "--sites", "1", "--images-per-site", "11",
                 "--heldout-images", "0", "--size", "32", "--quiet"]) == 0
    assert main(["grid", "--phantom", str(out), "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > grid.size[1] > 100
    with pytest.raises(SystemExit) as refused:
        main(["phantom", "--out", str(tmp_path / "x"), "--classes", "nonsense", "--quiet"])
    assert refused.value.code == 2


# --- lesion ground truth -------------------------------------------------------------------


@pytest.mark.parametrize("label", CATEGORIES)
def test_every_class_renders_with_its_findings(label):
    cfp, findings = render_fundus(np.random.default_rng(0), (label,), "OD", 64)
    assert cfp.shape == (64, 64, 3) and cfp.dtype == np.uint8
    assert findings.labels == (label,) and findings.modality == "CFP"
    scan, oct_findings = render_oct(np.random.default_rng(0), (label,), "OS", 64)
    assert scan.shape == oct_shape(64) and scan.dtype == np.uint8
    assert oct_findings.signs
    report = build_report(findings, np.random.default_rng(0))
    assert "right eye" in report.lower() or "(OD)" in report
    assert report.rstrip(".").split(": ")[-1]  # ends with an impression


def test_yellow_lesions_cup_and_haze_show_in_pixels():
    def mean(stat, label):
        return np.mean([stat(img) for img in _render_many((label,), 8)])

    normal_yellow = mean(yellow_fraction, "normal")
    assert mean(yellow_fraction, "amd") > normal_yellow + 0.005
    assert mean(yellow_fraction, "dme") > normal_yellow + 0.005
    assert mean(local_contrast, "cataract") < 0.4 * mean(local_contrast, "normal")
    assert mean(pale_fraction, "glaucoma") > 3 * mean(pale_fraction, "normal")
    _, glaucoma = render_fundus(np.random.default_rng(1), ("glaucoma",), "OD", 64)
    _, normal = render_fundus(np.random.default_rng(1), ("normal",), "OD", 64)
    assert glaucoma.cup_disc_ratio >= 0.7 > 0.5 > normal.cup_disc_ratio


def test_dr_lesion_counts_grow_with_grade():
    red = ("microaneurysm", "haemorrhage")
    means = []
    for grade in ("normal", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr"):
        counts = [sum(render_fundus(np.random.default_rng(i), (grade,), "OD", 32)[1].count(k)
                      for k in red) for i in range(8)]
        means.append(np.mean(counts))
    assert means[0] == 0 and all(a < b for a, b in zip(means, means[1:]))


def test_haemorrhages_are_dark_where_the_findings_say():
    img, findings = render_fundus(np.random.default_rng(3), ("severe_npdr",), "OD", 128)
    green = img[..., 1].astype(float)
    inside = green[img.max(-1) > 20]
    at_lesions = [green[int(h.y * 128), int(h.x * 128)] for h in findings.lesions
                  if h.kind == "haemorrhage"]
    assert len(at_lesions) >= 20
    assert np.median(at_lesions) < np.median(inside) - 10


def test_laterality_puts_the_disc_on_the_nasal_side():
    for eye, side in (("OD", 1), ("OS", -1)):
        img, _ = render_fundus(np.random.default_rng(2), ("normal",), eye, 128)
        bright = np.argwhere(img.astype(int).sum(-1) > 600)  # the disc is the brightest blob
        assert np.sign(bright[:, 1].mean() - 64) == side


def test_oct_shows_drusen_and_macular_oedema():
    def central(label):
        return np.mean([render_oct(np.random.default_rng(i), (label,), "OD", 64)[1]
                        .extras["central_thickness"] for i in range(5)])

    assert central("dme") > 1.5 * central("normal")
    _, amd = render_oct(np.random.default_rng(0), ("amd",), "OD", 64)
    _, dme = render_oct(np.random.default_rng(0), ("dme",), "OD", 64)
    assert amd.count("drusen") >= 3 and dme.count("intraretinal_cyst") >= 3
    assert "cyst" in build_report(dme, np.random.default_rng(0))


def test_multilabel_dme_reaches_the_report():
    _, findings = render_fundus(np.random.default_rng(0), ("moderate_npdr", "dme"), "OS", 64)
    report = build_report(findings, np.random.default_rng(0))
    assert "left eye" in report.lower() or "(OS)" in report
    assert "moderate non-proliferative diabetic retinopathy with diabetic macular oedema" in report


# --- likeness to real images -----------------------------------------------------------------


def _real(folder: str) -> list[Path]:
    images = sorted((REAL / folder / "images").glob("*"))
    if not images:
        pytest.skip(f"real reference images not found under {REAL / folder} (shared data absent)")
    return images


def test_fov_disc_fraction_helper_on_a_drawn_circle():
    yy, xx = np.mgrid[0:100, 0:100]
    disc = ((xx - 49.5) ** 2 + (yy - 49.5) ** 2 < 40 ** 2)[..., None] * np.array([200, 80, 40])
    assert fov_fraction(disc.astype(np.uint8)) == pytest.approx(np.pi * 0.16, abs=0.01)
    assert is_grey(np.zeros((4, 4), np.uint8)) and not is_grey(disc.astype(np.uint8))


def test_phantom_fundus_statistics_match_real_photographs(phantom):
    real = [load_image(p, 64) for p in _real("misc_samples")]
    real_fov = [fov_fraction(r) for r in real]
    real_mean = [fov_mean_intensity(r) for r in real]
    for site in ("site_0", "site_1", "heldout"):
        _, rows = _read_manifest(phantom / site / "manifest.csv")
        cfps = [load_image(phantom / site / r["image"], 64) for r in rows if r["modality"] == "CFP"]
        fov = np.mean([fov_fraction(c) for c in cfps])
        mean = np.mean([fov_mean_intensity(c) for c in cfps])
        assert min(real_fov) - 0.15 <= fov <= max(real_fov) + 0.15, (site, fov)
        assert 0.75 * min(real_mean) <= mean <= 1.25 * max(real_mean), (site, mean)
        for cfp in cfps:
            r, g, b = fov_mean_rgb(cfp)
            assert r > g > b, site
    for r in real:  # the property really holds for the real photographs
        red, green, blue = fov_mean_rgb(r)
        assert red > green > blue


def test_phantom_oct_statistics_match_real_bscans(phantom):
    height, width = oct_shape(64)
    real = [np.asarray(Image.open(p).convert("L").resize((width, height), Image.BILINEAR))
            for p in _real("oct_kermany_heysaw")]
    real_stats = np.array([grey_mean_std(r) for r in real])
    lo, hi = real_stats.min(0), real_stats.max(0)
    for site in ("site_0", "site_1", "heldout"):
        _, rows = _read_manifest(phantom / site / "manifest.csv")
        scans = [np.asarray(Image.open(phantom / site / r["image"])) for r in rows
                 if r["modality"] == "OCT"]
        assert all(is_grey(s) for s in scans)
        mean, std = np.mean([grey_mean_std(s) for s in scans], axis=0)
        assert 0.75 * lo[0] <= mean <= 1.25 * hi[0], (site, mean, lo[0], hi[0])
        assert 0.75 * lo[1] <= std <= 1.25 * hi[1], (site, std, lo[1], hi[1])


def test_neutral_domain_is_the_default():
    a, _ = render_fundus(np.random.default_rng(9), ("normal",), "OD", 32)
    b, _ = render_fundus(np.random.default_rng(9), ("normal",), "OD", 32, NEUTRAL_DOMAIN)
    assert np.array_equal(a, b)


# --- OCT volumes -------------------------------------------------------------------------------

# sha256 (first 16 hex digits) of render_oct(default_rng(seed), labels, eye, size) as written by
# the generator before volumes existed: published phantoms and figures depend on these bytes.
RENDER_OCT_HASHES = [
    (("normal",), "OD", 64, 0, "0e28340f1cb4f68b"),
    (("amd",), "OS", 64, 1, "49391d71385d74f8"),
    (("dme", "moderate_npdr"), "OD", 64, 2, "0f117250bcf4b04e"),
    (("pdr",), "OS", 48, 3, "09f6e0f4445c62bd"),
    (("glaucoma",), "OD", 64, 4, "ffeb24a8bab6779c"),
    (("pathologic_myopia",), "OS", 32, 5, "d1307f35790807bc"),
    (("cataract",), "OD", 64, 6, "d445cc52fecba28b"),
    (("hypertensive_retinopathy",), "OD", 64, 7, "50f4238f86dba1a5"),
    (("pdr",), "OD", 64, 11, "10009541928db440"),
]
# The same spec's manifests and 2-D images before volumes existed.
LEGACY_SPEC = PhantomSpec(n_sites=1, images_per_site=12, heldout_images=6, image_size=32, seed=3)
LEGACY_MANIFEST_SHA256 = {
    "site_0/manifest.csv": "7f7dbf3e4db988af2dfadc5a67d384b94a4369ea22d2c56339d03a8353f536eb",
    "heldout/manifest.csv": "bb93836916fe7b470b1c6f4c92d6c767edfe858633b91332e6f66e062fe9337e",
}
LEGACY_2D_TREE_SHA256 = "00ab50938f34215614a86ff235dc20889ef94ff436e068761b8270d0f25f6e25"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _legacy_tree_sha(root: Path) -> tuple[int, str]:
    """Hash over every manifest.csv and PNG (path and bytes), the files that existed before."""
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.name == "manifest.csv" or p.suffix == ".png")
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return len(files), digest.hexdigest()


def _volume_streams(seed: int, n_slices: int = 16) -> list[np.random.SeedSequence]:
    """The streams render_oct_volume documents: geometry, lesion heights, per-slice speckle."""
    return np.random.SeedSequence(int(np.random.default_rng(seed).integers(2**63))).spawn(
        2 + n_slices)


def _lesion_free_slice(seed: int, labels: tuple[str, ...], index: int, n_slices: int = 16
                       ) -> np.ndarray:
    """Slice ``index`` of render_oct_volume(default_rng(seed), labels, "OD", 64) without its
    focal lesions: same geometry, offset and speckle."""
    streams = _volume_streams(seed, n_slices)
    scan, _ = render_oct(np.random.default_rng(streams[0]), labels, "OD", 64,
                         offset=float(slice_offsets(n_slices)[index]),
                         presence=lambda kind, count: np.zeros(count),
                         noise_rng=np.random.default_rng(streams[2 + index]))
    return scan


def _ilm_rows(volume: np.ndarray) -> np.ndarray:
    """Row of the inner limiting membrane (first bright row) in the outer quarters of each slice,
    away from the fovea whose pit fades across the raster: [S, W/2]."""
    smooth = ndimage.gaussian_filter(volume.astype(float), (0, 1, 1))
    rows = (smooth > 70).argmax(1)
    width = volume.shape[2]
    return rows[:, np.r_[0:width // 4, 3 * width // 4:width]].astype(float)


@pytest.mark.parametrize(("labels", "eye", "size", "seed", "digest"), RENDER_OCT_HASHES)
def test_render_oct_bytes_are_unchanged(labels, eye, size, seed, digest):
    scan, _ = render_oct(np.random.default_rng(seed), labels, eye, size)
    assert _sha(scan.tobytes())[:16] == digest


def test_render_oct_unchanged_in_a_site_domain():
    domain = sample_site_domain(np.random.default_rng(9), heldout=True)
    scan, findings = render_oct(np.random.default_rng(8), ("pdr", "dme"), "OS", 64, domain)
    assert _sha(scan.tobytes())[:16] == "78cba3196c85479c"
    assert findings.signs == ("retinal_thickening", "intraretinal_fluid", "hyperreflective_foci")


def test_volume_shape_dtype_and_determinism():
    volume, findings = render_oct_volume(np.random.default_rng(0), ("amd",), "OD", 64)
    assert volume.shape == (16, *oct_shape(64)) and volume.dtype == np.uint8
    again, _ = render_oct_volume(np.random.default_rng(0), ("amd",), "OD", 64)
    assert np.array_equal(volume, again)
    small, _ = render_oct_volume(np.random.default_rng(0), ("amd",), "OD", 32, n_slices=5)
    assert small.shape == (5, *oct_shape(32))
    assert findings.modality == "OCT" and findings.labels == ("amd",) and findings.eye == "OD"
    with pytest.raises(ValueError, match="at least 2"):
        render_oct_volume(np.random.default_rng(0), ("amd",), "OD", 64, n_slices=1)


def test_volume_slices_share_the_geometry_with_fresh_speckle():
    normal, _ = render_oct_volume(np.random.default_rng(0), ("normal",), "OD", 64)
    streams = _volume_streams(0)
    for i, offset in enumerate(slice_offsets(16)):  # each slice replays the geometry stream
        scan, _ = render_oct(np.random.default_rng(streams[0]), ("normal",), "OD", 64,
                             offset=float(offset), noise_rng=np.random.default_rng(streams[2 + i]))
        assert np.array_equal(scan, normal[i]), i
    volume, findings = render_oct_volume(np.random.default_rng(0), ("amd",), "OD", 64)
    ilm = _ilm_rows(volume)
    within = np.abs(ilm - np.median(ilm, 0)).mean(1).max()
    other, _ = render_oct_volume(np.random.default_rng(50), ("amd",), "OD", 64)
    across = np.abs(_ilm_rows(other) - np.median(ilm, 0)).mean(1).min()
    assert within < 0.5 < 0.9 < across, (within, across)  # the measure tells eyes apart
    assert all(not np.array_equal(volume[i], volume[i + 1]) for i in range(15))
    # The foveal pit is deepest in the middle of the raster: the ILM dips most there.
    centre = int(findings.extras["fovea_x"] * 64)
    smooth = ndimage.gaussian_filter(volume.astype(float), (0, 1, 1))
    ilm_at_fovea = (smooth[:, :, centre - 1:centre + 2] > 70).argmax(1).mean(1)
    assert ilm_at_fovea[7:9].mean() > ilm_at_fovea[[0, 15]].mean() + 1.5


@pytest.mark.parametrize(("labels", "seed", "kinds"), [
    (("amd",), 0, {"drusen"}),
    (("dme",), 1, {"intraretinal_cyst", "hyperreflective_focus"}),
])
def test_volume_lesions_show_in_some_slices_only(labels, seed, kinds):
    volume, findings = render_oct_volume(np.random.default_rng(seed), labels, "OD", 64)
    slices = findings.extras["lesion_slices"]
    assert set(slices) == kinds
    shown = sorted({i for indices in slices.values() for i in indices})
    assert 0 < len(shown) < 16
    for kind in kinds:
        assert findings.count(kind) >= 1
    for i in range(16):
        clean = _lesion_free_slice(seed, labels, i)
        if i not in shown:
            assert np.array_equal(volume[i], clean), i
    main_kind = "drusen" if "drusen" in kinds else "intraretinal_cyst"
    for i in slices[main_kind]:  # drusen and cysts are visible in every slice said to show them
        assert np.abs(volume[i].astype(int) - _lesion_free_slice(seed, labels, i)).sum() > 50, i
    best = max(slices[main_kind], key=lambda i: np.abs(
        volume[i].astype(int) - _lesion_free_slice(seed, labels, i)).mean())
    assert np.abs(volume[best].astype(int) - _lesion_free_slice(seed, labels, best)).mean() > 0.4


def test_volume_findings_diffuse_signs_and_report():
    _, myopia = render_oct_volume(np.random.default_rng(2), ("pathologic_myopia",), "OS", 64)
    assert myopia.signs == ("posterior_staphyloma", "thin_choroid")
    assert myopia.extras["lesion_slices"] == {}
    _, normal = render_oct_volume(np.random.default_rng(2), ("normal",), "OS", 64)
    assert normal.signs == ("normal_layers",) and not normal.lesions
    _, dme = render_oct_volume(np.random.default_rng(1), ("dme",), "OD", 64)
    assert {"retinal_thickening", "intraretinal_fluid", "hyperreflective_foci"} <= set(dme.signs)
    assert "normal_layers" not in dme.signs
    assert "cyst" in build_report(dme, np.random.default_rng(0))
    assert dme.extras["central_slice"] in (7, 8) and dme.extras["central_thickness"] > 0


def test_spec_validates_volume_fields():
    for bad in ({"volume_slices": 1}, {"volume_slices": 65}, {"volume_format": "png"}):
        with pytest.raises(ValueError, match="volume_"):
            PhantomSpec(**bad)
    assert PhantomSpec(volume_slices=0).volume_slices == 0
    assert PhantomSpec().volume_slices == 16 and PhantomSpec().volume_format == "tiff"


def test_manifest_and_2d_images_unchanged_with_volumes(tmp_path):
    generate_phantom(LEGACY_SPEC, tmp_path / "vol", progress=False)
    for name, digest in LEGACY_MANIFEST_SHA256.items():
        assert _sha((tmp_path / "vol" / name).read_bytes()) == digest, name
    assert _legacy_tree_sha(tmp_path / "vol") == (38, LEGACY_2D_TREE_SHA256)
    assert (tmp_path / "vol" / "site_0" / "volumes.csv").is_file()
    flat = PhantomSpec(n_sites=1, images_per_site=12, heldout_images=6, image_size=32, seed=3,
                       volume_slices=0)
    generate_phantom(flat, tmp_path / "flat", progress=False)
    assert _legacy_tree_sha(tmp_path / "flat") == (38, LEGACY_2D_TREE_SHA256)
    assert not list((tmp_path / "flat").rglob("volumes.csv"))
    assert not list((tmp_path / "flat").rglob("*_OCT_volume.*"))
    marker = json.loads((tmp_path / "flat" / "phantom.json").read_text())
    assert marker["volume_shape"] is None and marker["sites"][0]["volumes"] is None


def _capture_volumes(monkeypatch) -> list[np.ndarray]:
    rendered: list[np.ndarray] = []

    def recording(*args, **kwargs):
        volume, findings = render_oct_volume(*args, **kwargs)
        rendered.append(volume)
        return volume, findings

    monkeypatch.setattr(generate_module, "render_oct_volume", recording)
    return rendered


def test_volumes_manifest_and_tiff_files(phantom):
    marker = json.loads((phantom / "phantom.json").read_text())
    assert marker["volume_shape"] == [16, *oct_shape(64)]
    assert marker["spec"]["volume_slices"] == 16 and "volumes" in marker["conventions"]
    for site in marker["sites"]:
        columns, rows = _read_manifest(phantom / site["volumes"])
        assert columns == list(VOLUME_COLUMNS) == list(MANIFEST_COLUMNS) + ["frames"]
        _, images = _read_manifest(phantom / site["manifest"])
        octs = {r["study_id"]: r for r in images if r["modality"] == "OCT"}
        assert len(rows) == len(octs) == site["n_volumes"]
        for row in rows:
            twin = octs[row["study_id"]]
            assert row["modality"] == "OCT" and row["frames"] == "16"
            assert row["image"] == twin["image"].replace("_OCT.png", "_OCT_volume.tif")
            for key in ("patient_id", "eye", "labels", "split", "site"):
                assert row[key] == twin[key], key
            assert row["report"].strip()
        with Image.open(phantom / site["name"] / rows[0]["image"]) as tiff:
            assert tiff.format == "TIFF" and tiff.n_frames == 16 and tiff.mode == "L"


def test_volume_files_hold_the_rendered_pixels(tmp_path, monkeypatch):
    rendered = _capture_volumes(monkeypatch)
    spec = PhantomSpec(n_sites=1, images_per_site=4, heldout_images=0, image_size=32, seed=1)
    generate_phantom(spec, tmp_path, progress=False)
    _, rows = _read_manifest(tmp_path / "site_0" / "volumes.csv")
    assert len(rows) == len(rendered) == 4
    for row, volume in zip(rows, rendered):
        read = read_image(tmp_path / "site_0" / row["image"])
        assert read.shape == (16, *oct_shape(32), 1) and read.dtype == np.float32
        assert np.array_equal(read[..., 0], volume / np.float32(255.0))


def test_volumes_as_multiframe_dicom(tmp_path, monkeypatch):
    rendered = _capture_volumes(monkeypatch)
    spec = PhantomSpec(n_sites=1, images_per_site=4, heldout_images=0, image_size=32, seed=1,
                       volume_slices=6, volume_format="dicom")
    generate_phantom(spec, tmp_path / "a", progress=False)
    _, rows = _read_manifest(tmp_path / "a" / "site_0" / "volumes.csv")
    assert len(rows) == len(rendered) == 4
    for row, volume in zip(rows, rendered):
        path = tmp_path / "a" / "site_0" / row["image"]
        assert path.suffix == ".dcm" and row["frames"] == "6"
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.4"
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "OPT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert int(ds.NumberOfFrames) == 6 and (ds.Rows, ds.Columns) == oct_shape(32)
        assert ds.BitsAllocated == 8 and ds.PatientID == row["patient_id"]
        assert ds.Laterality == {"OD": "R", "OS": "L"}[row["eye"]]
        assert np.array_equal(ds.pixel_array, volume)
        read = read_image(path)
        assert read.shape == (6, *oct_shape(32), 1)
        assert np.array_equal(read[..., 0], volume / np.float32(255.0))
    generate_phantom(spec, tmp_path / "b", progress=False)  # deterministic UIDs: same bytes
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")


def test_ensure_phantom_refuses_a_phantom_without_volumes(tmp_path):
    cfg = PhantomDataConfig(root=str(tmp_path), sites=1, images_per_site=3, heldout_images=0,
                            image_size=32)
    old_spec = {"n_sites": 1, "images_per_site": 3, "heldout_images": 0, "image_size": 32,
                "seed": 0}
    (tmp_path / "phantom.json").write_text(json.dumps(
        {"generator": "retinafl-phantom", "status": "complete", "spec": old_spec}))
    with pytest.raises(ValueError, match=r"volume_slices=None \(config wants 16\)"):
        embedded.ensure_phantom(cfg, progress=False)
