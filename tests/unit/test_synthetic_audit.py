"""The memorisation audit's own checks and what it guarantees, on 64 px phantom images in seconds
(corpora are written directly, no diffusion is trained for them): the distance-to-closest-record
check refuses lightly noised copies of training images that the near-copy check misses, the
embedding check flags colour-shifted copies that pixel space misses, an unreadable synthetic or
reference image fails the audit and is named, export refuses (and leaves nothing) when an image
changed after the audit, a manifest without val/test rows gets a seeded patient-level hold-out
that the audit then uses, and ``retina-synth train`` prints the loss trend it logged."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import synthetic.audit
from shared_model.conf import compose_app, write_resolved_config
from shared_model.data.manifest import Record, load_manifest
from shared_model.model import build_model
from shared_model.model.checkpoint import save_checkpoint
from synthetic.audit import AuditError, run_audit
from synthetic.export import ExportRefused, export_corpus
from synthetic.holdout import HOLDOUT_FILE, choose_patients, hold_out
from synthetic.sampling import MANIFEST
from synthetic.training import loss_trend

TINY = ["generator.block_channels=[16,32]", "generator.attention_levels=0", "train.batch_size=8",
        "train.warmup_steps=2", "train.lr=2e-3", "train.num_workers=0", "train.log_every=1"]


def _app(manifest: Path, *extra: str):
    return compose_app("synth", [f"data.manifests=[{manifest}]", *extra])


def _rows(phantom: Path, site: str, split: str | None = None) -> list[Record]:
    return load_manifest(phantom / site / "manifest.csv").select(split)


def _pixels(record: Record) -> np.ndarray:
    return np.asarray(Image.open(record.image).convert("RGB"), dtype=np.float32) / 255


def _corpus(images: list[tuple[Record, np.ndarray]], folder: Path) -> Path:
    """A corpus folder: each (record, [H, W, 3] image in [0, 1]) as a PNG with the record's labels."""
    (folder / "images").mkdir(parents=True)
    with open(folder / MANIFEST, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "patient_id", "eye", "modality", "study_id", "labels", "report", "split"])
        for k, (record, pixels) in enumerate(images):
            name = f"syn_{k:04d}.png"
            Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8)).save(folder / "images" / name)
            writer.writerow([f"images/{name}", f"syn-{k}", "", record.modality, "", ";".join(record.labels),
                             "synthetic caption", "train"])
    (folder / "corpus.json").write_text(json.dumps({"n": len(images), "sample": {"scheduler": "ddim", "guidance": 2,
                                                    "seed": 0}, "steps": 25, "label_mix": {}, "modality_mix": {},
                                                    "generator": {"generator": {}, "categories": [], "modalities": [],
                                                                  "extra": {"step": 0}}}))
    return folder


def _noised(records: list[Record], sigma: float) -> list[tuple[Record, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(r, _pixels(r) + rng.normal(0, sigma, _pixels(r).shape)) for r in records]


def test_dcr_refuses_noised_training_copies_the_near_copy_check_misses(small_phantom, tmp_path):
    app = _app(small_phantom / "site_0" / "manifest.csv")
    # Noise of 0.25 puts each copy further from its original than the near-copy threshold, but a
    # copy stays closer to the training set than to unseen images: only the DCR check sees it.
    copies = run_audit(_corpus(_noised(_rows(small_phantom, "site_0", "train")[:30], 0.25), tmp_path / "copies"),
                       app.data, app.audit, seed=0)
    assert copies["pixel"]["near_copy_fraction"] == 0
    assert copies["pixel"]["closer_to_train_fraction"] > app.audit.max_closer_to_train
    assert not copies["passed"] and copies["failures"] == [
        f"pixel space: near copies 0.000 (max 0.02), closer to train {copies['pixel']['closer_to_train_fraction']:.3f} "
        "(max 0.55)"]
    with pytest.raises(ExportRefused, match="closer to train 0.6"):
        export_corpus(tmp_path / "copies", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # --force overrides a verdict, never what was audited: an image replaced since is refused regardless.
    shutil.copy(tmp_path / "copies" / "images" / "syn_0001.png", tmp_path / "copies" / "images" / "syn_0000.png")
    with pytest.raises(ExportRefused, match="images/syn_0000.png: SHA-256 differs"):
        export_corpus(tmp_path / "copies", tmp_path / "out", force_reason="reviewed")
    assert not (tmp_path / "out").exists()
    # The same noise on images the generator never saw passes: the check measures memorisation, not noise.
    unseen = run_audit(_corpus(_noised(_rows(small_phantom, "site_1")[:30], 0.25), tmp_path / "unseen"),
                       app.data, app.audit, seed=0)
    assert unseen["passed"] and unseen["pixel"]["closer_to_train_fraction"] <= app.audit.max_closer_to_train


@pytest.fixture(scope="module")
def clip_checkpoint(tiny_model_cfg, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(tiny_model_cfg, pretrained=False), tiny_model_cfg,
                           tmp_path_factory.mktemp("clip") / "checkpoint")


def test_embedding_check_flags_colour_shifted_copies_pixel_space_misses(small_phantom, clip_checkpoint, tmp_path,
                                                                       monkeypatch):
    app = _app(small_phantom / "site_0" / "manifest.csv", f"audit.checkpoint={clip_checkpoint}")
    # Label fidelity encodes every class prompt with the text tower (most of the time here); not under test.
    monkeypatch.setattr(synthetic.audit, "label_fidelity", lambda *args: float("nan"))

    def cast(pixels: np.ndarray) -> np.ndarray:  # another camera's colour cast inside the field of view
        return pixels + (pixels.max(-1, keepdims=True) > 0.04) * np.array([-0.1, 0.1, 0.12])

    # The tiny model's input (local contrast) removes a colour cast, so the copies embed next to
    # their originals while their pixels are further from them than any unseen image is.
    images = [(r, _pixels(r)) for r in _rows(small_phantom, "site_1")[:25]]
    images += [(r, cast(_pixels(r))) for r in _rows(small_phantom, "site_0", "train")[:5]]
    result = run_audit(_corpus(images, tmp_path / "c"), app.data, app.audit, seed=0)
    assert result["pixel"]["passed"] and result["pixel"]["near_copies"] == []
    assert result["embedding"]["near_copies"] == [25, 26, 27, 28, 29] and not result["embedding"]["passed"]
    assert not result["passed"] and [f.split(":")[0] for f in result["failures"]] == ["embedding space"]
    assert result["diversity"]["synthetic"] > 0


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from synthetic.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code, out.getvalue()


def test_an_unreadable_synthetic_image_fails_the_audit_and_is_named(small_phantom, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # whole lines, so a long path is not folded mid-name
    app = _app(small_phantom / "site_0" / "manifest.csv", "report.html=false")
    write_resolved_config(app, tmp_path / "gen")
    corpus = _corpus([(r, _pixels(r)) for r in _rows(small_phantom, "site_1")[:30]], tmp_path / "c")
    for k in (3, 7):
        (corpus / "images" / f"syn_{k:04d}.png").write_bytes(b"not a PNG")
    code, out = _run_cli(["audit", "--corpus", str(corpus), "--generator", str(tmp_path / "gen")])
    audit = json.loads((corpus / "audit.json").read_text())
    assert code == 3 and not audit["passed"] and audit["n_synthetic"] == 28
    assert [line.split(", field")[0] for line in audit["unreadable"]["synthetic"]] == [
        f"{corpus / MANIFEST}: row 4", f"{corpus / MANIFEST}: row 8"]
    assert audit["failures"][0].startswith("synthetic images not checked: 2 unreadable files: ")
    assert "audit FAILED" in out and "syn_0003.png" in out and "syn_0007.png" in out
    with pytest.raises(ExportRefused, match="synthetic images not checked"):
        export_corpus(corpus, tmp_path / "out")


def test_unreadable_reference_images_fail_the_audit_with_the_reason(small_phantom, tmp_path):
    shutil.copytree(small_phantom / "site_0", tmp_path / "site_0")
    rows = _rows(tmp_path, "site_0")
    damaged = [next(r for r in rows if r.split == "train"), next(r for r in rows if r.split == "val")]
    for record in damaged:
        record.image.write_bytes(record.image.read_bytes()[:100])  # truncated
    app = _app(tmp_path / "site_0" / "manifest.csv")
    result = run_audit(_corpus([(r, _pixels(r)) for r in _rows(small_phantom, "site_1")[:30]], tmp_path / "c"),
                       app.data, app.audit, seed=0)
    assert result["pixel"]["passed"] and not result["passed"]
    assert [len(result["unreadable"][k]) for k in ("synthetic", "train", "heldout")] == [0, 1, 1]
    assert [f.split(":")[0] for f in result["failures"]] == ["training images", "held-out images"]
    assert all("cannot vouch" in f and str(r.image) in f for f, r in zip(result["failures"], damaged))


def test_export_refuses_images_changed_after_the_audit_and_leaves_nothing(small_phantom, tmp_path, monkeypatch):
    app = _app(small_phantom / "site_0" / "manifest.csv")
    corpus = _corpus([(r, _pixels(r)) for r in _rows(small_phantom, "site_1")[:30]], tmp_path / "c")
    assert run_audit(corpus, app.data, app.audit, seed=0)["passed"]
    images = corpus / "images"
    original = {name: (images / name).read_bytes() for name in ("syn_0004.png", "syn_0006.png")}
    shutil.copy(images / "syn_0005.png", images / "syn_0004.png")
    (images / "syn_0006.png").unlink()
    (images / "extra.png").write_bytes(original["syn_0006.png"])
    with pytest.raises(ExportRefused) as refused:
        export_corpus(corpus, tmp_path / "out")
    assert ("3 file(s): images/syn_0004.png: SHA-256 differs from the audit's (changed after the audit); "
            "images/syn_0006.png: audited, but missing (or outside images/, which is all export copies); "
            "images/extra.png: not audited (added after the audit)") in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no export, no temporary copy
    (images / "extra.png").unlink()
    for name, data in original.items():
        (images / name).write_bytes(data)
    # An image swapped while the corpus is being copied: the copy is what is checked, so it is refused and removed.
    copytree = shutil.copytree

    def swapping_copytree(src, dst, **kwargs):
        copytree(src, dst, **kwargs)
        Path(dst, "syn_0006.png").write_bytes(original["syn_0004.png"])

    monkeypatch.setattr(shutil, "copytree", swapping_copytree)
    with pytest.raises(ExportRefused, match=r"1 file\(s\): images/syn_0006.png: SHA-256 differs"):
        export_corpus(corpus, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    monkeypatch.setattr(shutil, "copytree", copytree)
    card = export_corpus(corpus, tmp_path / "out")  # the audited corpus, as it was
    assert card.is_file() and len(list((tmp_path / "out" / "images").iterdir())) == 30


def test_loss_trend_averages_the_first_and_last_logged_steps():
    logged = [(20, 0.74), (40, 0.5), (60, 0.3), (80, 0.2), (100, 0.09)]
    assert loss_trend(logged, window=2) == {"first": pytest.approx(0.62), "first_steps": [20, 40],
                                            "last": pytest.approx(0.145), "last_steps": [80, 100]}
    assert loss_trend(logged[:3], window=5)["first_steps"] == [20, 20]  # never overlapping
    assert loss_trend([]) is None


def _unsplit_manifest(phantom: Path, folder: Path) -> Path:
    """site_0's rows with no split (a hospital's training manifest) and absolute image paths."""
    rows = list(csv.DictReader(open(phantom / "site_0" / "manifest.csv")))
    folder.mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "split": "", "image": str(phantom / "site_0" / row["image"])} for row in rows)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def unsplit_run(small_phantom, tmp_path_factory):
    """``retina-synth train`` for 4 steps on a manifest without val/test rows; the run folder, the
    manifest, what it printed and the records the generator trained on."""
    import synthetic.training

    tmp = tmp_path_factory.mktemp("unsplit")
    manifest = _unsplit_manifest(small_phantom, tmp / "site")
    trained: list[Record] = []

    class Spy(synthetic.training.GeneratorDataset):
        def __init__(self, records, *args):
            trained.extend(records)
            super().__init__(records, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic.training, "GeneratorDataset", Spy)
        patch.setenv("COLUMNS", "300")
        code, out = _run_cli(["train", "--manifest", str(manifest), "--run-dir", str(tmp / "gen"), *TINY,
                              "train.steps=4", "train.checkpoint_every=0", "train.holdout_fraction=0.3",
                              "report.html=false"])
    assert code == 0
    return tmp / "gen", manifest, out, trained


def test_train_prints_the_first_and_last_logged_losses(unsplit_run):
    run_dir, _, out, _ = unsplit_run
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(losses[:2]) / 2, sum(losses[2:]) / 2
    assert len(losses) == 4 and f"{first:.4f}" != f"{last:.4f}"
    assert f"loss {first:.4f} (steps 1-2) -> {last:.4f} (steps 3-4)" in out


def test_a_manifest_without_val_test_rows_holds_out_whole_patients(unsplit_run):
    run_dir, manifest, out, trained = unsplit_run
    rows = load_manifest(manifest).records
    holdout = json.loads((run_dir / HOLDOUT_FILE).read_text())
    patients = set(holdout["patients"])
    assert len(patients) == round(0.3 * len({r.patient_id for r in rows})) == 8
    assert holdout["patients"] == choose_patients(rows, 0.3, seed=0)  # seeded: the same draw again
    assert not patients & {r.patient_id for r in trained}
    assert sorted(str(r.image) for r in rows if r.patient_id in patients) == sorted(h["image"] for h in holdout["rows"])
    assert len(trained) + len(holdout["rows"]) == len(rows) == 80
    assert f"held out for the audit: 8 patients ({len(holdout['rows'])} rows)" in out


def test_the_audit_uses_the_patients_the_generator_held_out(unsplit_run, small_phantom, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    run_dir, _, _, trained = unsplit_run
    corpus = _corpus([(r, _pixels(r)) for r in _rows(small_phantom, "site_1")[:30]], tmp_path / "c")
    code, out = _run_cli(["audit", "--corpus", str(corpus), "--generator", str(run_dir), "report.html=false"])
    audit = json.loads((corpus / "audit.json").read_text())
    held = json.loads((run_dir / HOLDOUT_FILE).read_text())["rows"]
    assert code == 0 and audit["passed"]
    assert audit["n_train"] == len(trained) and audit["n_heldout"] == len(held)
    assert audit["heldout"] == {"val_test_rows": 0, "holdout_file": str(run_dir / HOLDOUT_FILE),
                                "holdout_patients": 8, "holdout_rows": len(held)}
    assert f"held out: {len(held)} rows of 8 patients (holdout.json), 0 val/test rows" in out


def test_without_a_holdout_the_audit_says_how_to_fix_it(small_phantom, tmp_path):
    manifest = _unsplit_manifest(small_phantom, tmp_path / "site")
    app = _app(manifest, f"run_dir={tmp_path / 'gen'}", "train.holdout_fraction=0")
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / HOLDOUT_FILE).write_text("{}")  # a previous run's list: not this run's
    train, heldout = hold_out(app, load_manifest(manifest).records, resuming=False)
    assert len(train) == 80 and heldout == [] and not (tmp_path / "gen" / HOLDOUT_FILE).exists()
    corpus = _corpus([(r, _pixels(r)) for r in _rows(small_phantom, "site_1")[:30]], tmp_path / "c")
    with pytest.raises(AuditError, match=r"0 held-out rows .* has no holdout.json .* retrain the generator with "
                                         r"train.holdout_fraction=0.1, or add val/test rows of patients it never"):
        run_audit(corpus, app.data, app.audit, run_dir=tmp_path / "gen")
    one_patient = [r for r in load_manifest(manifest).records if r.patient_id == "site_0-p00000"]
    with pytest.raises(ValueError, match="train.holdout_fraction=0.1: the training rows have 1 patient"):
        hold_out(replace(app, train=replace(app.train, holdout_fraction=0.1)), one_patient, resuming=False)
    with pytest.raises(ValueError, match=r"train.holdout_fraction=1.0 is out of range: it must be in \[0, 1\)"):
        compose_app("synth", ["train.holdout_fraction=1"])
