"""Phantom retina generator: determinism, manifest layout, label skew, lesion ground truth,
and likeness to the real fundus photographs and OCT B-scans in shared/data/real."""

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared_model.data.phantom import (
    CATEGORIES,
    MANIFEST_COLUMNS,
    NEUTRAL_DOMAIN,
    PhantomSpec,
    build_report,
    generate_phantom,
    oct_shape,
    plan_site,
    render_fundus,
    render_oct,
)
from shared_model.cli.data import main
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
