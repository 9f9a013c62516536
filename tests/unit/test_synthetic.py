"""Synthetic corpora on CPU at tiny sizes: a few generator steps lower the loss, sampling gives the
requested label mix as a valid manifest, the audit flags a planted copy of a training image and
passes a sample without one, export refuses a failed audit (and records a forced one), and a
DP-SGD generator reports ε from its ledger."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from shared_model.conf import compose_app
from shared_model.data.manifest import load_manifest
from shared_model.privacy.ledger import LEDGER_FILE, PrivacyLedger
from synthetic.audit import run_audit
from synthetic.export import CARD, ExportRefused, export_corpus
from synthetic.generator import GENERATOR_DIR, load_generator
from synthetic.sampling import MANIFEST, sample_corpus
from synthetic.training import train_generator

TINY = ["generator.block_channels=[16,32]", "generator.attention_levels=0", "train.batch_size=8",
        "train.warmup_steps=2", "train.lr=2e-3", "train.num_workers=0", "train.log_every=1"]


def _app(phantom: Path, run_dir: Path, *extra: str):
    return compose_app("synth", [f"data.manifests=[{phantom / 'site_0' / 'manifest.csv'}]", f"run_dir={run_dir}",
                                 *TINY, *extra])


@pytest.fixture(scope="module")
def trained(small_phantom, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("generator")
    app = _app(small_phantom, run_dir, "train.steps=40", "train.checkpoint_every=20")
    summary = train_generator(app, progress=False)
    return app, summary


def test_a_few_steps_lower_the_loss_and_the_run_resumes(trained, small_phantom):
    app, summary = trained
    losses = [json.loads(line)["loss"] for line in (Path(app.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8
    assert summary["step"] == 40 and summary["privacy"] == {"mode": "none"}
    assert 'id="loss-per-step"' in (Path(app.run_dir) / "report.html").read_text()
    more = train_generator(replace(app, resume=True, train=replace(app.train, steps=42)), progress=False)
    assert more["step"] == 42 and more["steps_this_run"] == 2


def test_sampling_writes_the_requested_label_mix_as_a_valid_manifest(trained, tmp_path):
    app, _ = trained
    model, meta = load_generator(Path(app.run_dir) / GENERATOR_DIR)
    labels = ",".join(f"{k}={v}" for k, v in (("moderate_npdr", 0.7), ("glaucoma", 0.3)))
    cfg = replace(app.sample, n=10, labels=labels, modalities="CFP=1", steps=2, batch_size=4)
    sample_corpus(model, meta, cfg, tmp_path / "corpus", progress=False)
    records = load_manifest(tmp_path / "corpus" / MANIFEST).records
    assert Counter(r.labels for r in records) == {("moderate_npdr",): 7, ("glaucoma",): 3}
    assert all(r.modality == "CFP" and r.report and r.image.is_file() for r in records)
    with pytest.raises(ValueError, match="not one the generator was trained on"):
        sample_corpus(model, meta, replace(cfg, labels="retinal_detachment=1"), tmp_path / "other", progress=False)


def _corpus_from(records, folder: Path) -> Path:
    """A corpus folder (manifest + images) made of the given image files."""
    (folder / "images").mkdir(parents=True)
    with open(folder / MANIFEST, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "patient_id", "eye", "modality", "study_id", "labels", "report", "split"])
        for k, r in enumerate(records):
            shutil.copy(r.image, folder / "images" / f"syn_{k:04d}.png")
            writer.writerow([f"images/syn_{k:04d}.png", f"syn-{k}", "", r.modality, "", ";".join(r.labels),
                             "synthetic caption", "train"])
    (folder / "corpus.json").write_text(json.dumps({"n": len(records), "sample": {"scheduler": "ddim", "guidance": 2,
                                                    "seed": 0}, "steps": 25, "label_mix": {}, "modality_mix": {},
                                                    "generator": {"generator": {}, "categories": [], "modalities": [],
                                                                  "extra": {"step": 0}}}))
    return folder


def test_audit_flags_a_planted_copy_and_passes_a_clean_sample(trained, small_phantom, tmp_path):
    app, _ = trained
    # A clean "sample": real images of another site, which the generator never saw.
    other = [r for r in load_manifest(small_phantom / "site_1" / "manifest.csv").records][:30]
    clean = run_audit(_corpus_from(other, tmp_path / "clean"), app.data, app.audit, seed=0)
    assert clean["passed"] and clean["pixel"]["near_copy_fraction"] == 0
    train = [r for r in load_manifest(small_phantom / "site_0" / "manifest.csv").records if r.split == "train"]
    planted = run_audit(_corpus_from(other[:29] + [train[5]], tmp_path / "planted"), app.data, app.audit, seed=0)
    assert not planted["passed"] and planted["pixel"]["near_copies"] == [29]
    assert (tmp_path / "planted" / "closest_pairs.png").stat().st_size > 1000

    with pytest.raises(ExportRefused, match="near copies"):
        export_corpus(tmp_path / "planted", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    card = export_corpus(tmp_path / "planted", tmp_path / "forced", force_reason="reviewed by the DPO: phantom data")
    assert "reviewed by the DPO" in card.read_text() and "FAILED" in card.read_text()
    assert "passed" in export_corpus(tmp_path / "clean", tmp_path / "shared").read_text()
    assert (tmp_path / "shared" / MANIFEST).is_file() and (tmp_path / "shared" / CARD).is_file()


def test_audit_catches_a_caption_copied_from_a_training_report(trained, small_phantom, tmp_path):
    app, _ = trained
    train = [r for r in load_manifest(small_phantom / "site_0" / "manifest.csv").records if r.split == "train"]
    corpus = _corpus_from([r for r in load_manifest(small_phantom / "site_1" / "manifest.csv").records][:30],
                          tmp_path / "c")
    rows = list(csv.reader(open(corpus / MANIFEST)))
    rows[3][6] = "prefix " + next(r.report for r in train if len(r.report) > 60)
    with open(corpus / MANIFEST, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    result = run_audit(corpus, app.data, app.audit, seed=0)
    assert not result["passed"] and result["captions"]["captions_with_verbatim_span"] == [2]


def test_dp_generator_reports_epsilon(small_phantom, tmp_path):
    app = _app(small_phantom, tmp_path / "dp", "train.steps=3", "privacy.mode=dp-sgd", "privacy.noise_multiplier=1.0")
    summary = train_generator(app, progress=False)
    ledger = PrivacyLedger.load(tmp_path / "dp" / LEDGER_FILE)
    assert summary["privacy"]["epsilon"] == ledger.spent() > 0 and ledger.total_steps == 3
    _, meta = load_generator(tmp_path / "dp" / GENERATOR_DIR)
    assert meta["extra"]["privacy"]["unit"] == "patient"


def test_sampling_into_the_run_folder_adds_the_samples_to_both_reports(trained, tmp_path):
    from synthetic.cli import main

    app, _ = trained
    run_dir = Path(tmp_path / "gen")
    shutil.copytree(app.run_dir, run_dir)
    with pytest.raises(SystemExit) as done:
        main(["sample", "--generator", str(run_dir), "--out", str(run_dir / "corpus"), "--n", "2", "--steps", "2"])
    assert done.value.code == 0
    assert 'id="samples-corpus"' in (run_dir / "report.html").read_text()
    corpus_page = (run_dir / "corpus" / "report.html").read_text()
    assert "Synthetic samples: this corpus" in corpus_page and "Not audited yet" in corpus_page


def test_federated_generator_rounds_write_a_sampleable_generator(small_phantom, tmp_path):
    from server.federation import run_federation
    from server.round_checkpoint import latest_round
    from shared_model.run_config import flatten_config
    from tests.fixtures.in_process_grid import InProcessGrid, client_app_handler
    from tests.unit.test_federation import federation_cfg

    cfg = federation_cfg(small_phantom, tmp_path / "fed", "task=generator", "generator.block_channels=[16,32]",
                         "generator.attention_levels=0", "federation.rounds=2", "eval=none",
                         "strategy.fraction_evaluate=0")
    grid = InProcessGrid({node: client_app_handler(node, {"partition-id": k, "num-partitions": 2}, flatten_config(cfg))
                          for k, node in enumerate((11, 22))})
    state = run_federation(grid, cfg)
    assert [sorted(r["sites"]) for r in state.history] == [["site_0", "site_1"]] * 2
    assert all(r["sites"]["site_0"]["loss.diffusion"] > 0 for r in state.history)
    assert 'id="loss-per-site"' in (tmp_path / "fed" / "report.html").read_text()
    folder, _ = latest_round(tmp_path / "fed")
    model, meta = load_generator(folder)
    assert meta["extra"]["round"] == 2 and len(model.conditioning.categories) > 70  # the shared dictionary vocabulary
    assert (tmp_path / "fed" / "sites" / "site_0" / "generator" / "generator_state.pt").is_file()
    app = compose_app("synth", [])
    with pytest.raises(ValueError, match="trained federated"):
        sample_corpus(model, meta, replace(app.sample, n=2), tmp_path / "none", progress=False)
    sample_corpus(model, meta, replace(app.sample, n=2, steps=2, labels="glaucoma=1", modalities="OCT=1"),
                  tmp_path / "corpus", progress=False)
    assert [r.labels for r in load_manifest(tmp_path / "corpus" / MANIFEST).records] == [("glaucoma",)] * 2
