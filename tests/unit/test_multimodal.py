"""EyeCLIP's cross-modality term and RadCLIP's volume adapter: pairing by (patient, eye) across a
site's manifests and never across eyes, the term computed into the total and the gradients,
a term that cannot be computed refused at start, loss means over the steps that computed a
term, volumes through manifest, reader, training (the adapter learns) and evaluator."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from shared_model.conf import compose_app
from shared_model.config import EvalConfig, EvalSetConfig, LossConfig, TrainConfig
from shared_model.data.dataset import RetinaDataset, collate, load_slices
from shared_model.data.manifest import load_manifest
from shared_model.data.pairing import modality_partners
from shared_model.data.preprocess import to_model_input
from shared_model.eval.evaluate import embed_records, evaluate_model
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.runtime import seed_everything
from shared_model.train import LocalTrainer, TrainStats
from shared_model.train.centralized import build_training_dataset


def _write_site(folder, rows_by_manifest):
    """Manifests of one site from ``{name: [(patient, eye, modality, labels), ...]}``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for manifest, rows in rows_by_manifest.items():
        table = []
        for patient, eye, modality, labels in rows:
            name = f"images/{patient}_{eye or 'x'}_{modality}_{manifest}.png"
            shape = (64, 64, 3) if modality == "CFP" else (62, 64)
            Image.fromarray(np.random.default_rng(len(table)).integers(0, 255, shape, dtype=np.uint8)).save(
                folder / name)
            table.append([name, patient, eye, modality, labels, f"{modality} of {patient}."])
        paths[manifest] = folder / f"{manifest}.csv"
        pd.DataFrame(table, columns=["image", "patient_id", "eye", "modality", "labels", "report"]).to_csv(
            paths[manifest], index=False)
    return paths


def _records(paths):
    return [r for p in paths.values() for r in load_manifest(p).records]


def test_pairing_crosses_manifests_of_a_site_but_never_eyes(tmp_path):
    paths = _write_site(tmp_path, {
        "cfp": [("p1", "OD", "CFP", "amd"), ("p1", "OS", "CFP", "normal"), ("p2", "", "CFP", "glaucoma")],
        "oct": [("p1", "OD", "OCT", "amd"), ("p1", "OS", "OCT", "normal"), ("p2", "", "OCT", "glaucoma")]})
    records = _records(paths)
    partners = modality_partners(records, "eye")
    by_image = {r.image.name: r for r in records}
    for record, found in zip(records, partners):
        for j in found:
            other = records[j]
            assert (other.patient_id, other.eye, other.source != record.source) == (record.patient_id, record.eye, True)
    assert [len(p) for p in partners] == [1, 1, 0, 1, 1, 0]  # p2 has no laterality: never paired
    # Asked for, pairing by patient crosses the eyes (and pairs p2).
    by_patient = modality_partners(records, "patient")
    assert len(by_patient[0]) == 2 and len(by_patient[2]) == 1
    assert by_image["p1_OD_CFP_cfp.png"] in records


def test_configured_term_without_pairs_is_refused_at_start(tmp_path):
    paths = _write_site(tmp_path, {"cfp": [(f"p{i}", "OD", "CFP", "amd") for i in range(4)]})
    cfg = compose_app("train", ["+experiment=demo", f"data.manifests=[{paths['cfp']}]"])
    with pytest.raises(ValueError, match=r"loss.image_image=0.75 .* none of the 4 training images has a partner"):
        build_training_dataset(_records(paths), cfg)
    build_training_dataset(_records(paths), cfg, site="clinic")  # a site only warns: others may pair
    off = compose_app("train", ["+experiment=demo", "loss.image_image=0"])
    assert not build_training_dataset(_records(paths), off).pair_modalities


def test_cross_modality_term_enters_the_total_and_the_gradients(tmp_path, tiny_model_cfg):
    rows = [(f"p{i}", "OD", m, "amd" if i % 2 else "normal") for i in range(4) for m in ("CFP",)]
    paths = _write_site(tmp_path, {"cfp": rows, "oct": [(p, e, "OCT", lab) for p, e, _, lab in rows]})
    ds = RetinaDataset(_records(paths), 64, train=True, pair_modalities=True)
    batch = collate([ds[(i, i)] for i in range(len(ds))])
    assert batch.n_paired == 8 and bool(batch.pair_flip[4:].all()) and not bool(batch.pair_flip[:4].any())
    seed_everything(0)
    model = build_model(tiny_model_cfg)
    imgs = batch.model_input(torch.device("cpu"), model.input_norm)
    out = model(imgs, batch.texts)
    both = EyeCLIPObjective(LossConfig())(model, out, imgs, batch.label_ids, batch.pair_index, batch.labels,
                                          batch.pair_flip)
    assert set(both.terms) == {"image_text", "image_image", "mae"}
    assert torch.isclose(both.total, torch.tensor(0.75 * both.terms["image_text"] + 0.75 * both.terms["image_image"]
                                                  + both.terms["mae"]), atol=1e-4)
    pair_only = EyeCLIPObjective(LossConfig(image_text=0.0, mae=0.0))(
        model, out, imgs, batch.label_ids, batch.pair_index, batch.labels, batch.pair_flip)
    pair_only.total.backward(retain_graph=True)
    assert model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # the term reaches the tower
    unpaired = EyeCLIPObjective(LossConfig())(model, out, imgs, batch.label_ids, torch.full((8,), -1), batch.labels)
    assert "image_image" not in unpaired.terms  # not computed: absent, never a 0


def test_loss_means_divide_by_the_steps_that_computed_a_term():
    a = TrainStats(4, 40, 1.0, 40.0, {"total": 2.0, "image_image": 3.0}, [], {"total": 4, "image_image": 1})
    b = TrainStats(2, 20, 1.0, 20.0, {"total": 1.0}, [], {"total": 2})
    merged = TrainStats.merge([a, b])
    assert merged.losses == {"total": pytest.approx(5 / 3), "image_image": 3.0}
    assert merged.term_steps == {"total": 6, "image_image": 1}


def test_reply_metrics_average_over_the_sites_that_report_them():
    from flwr.app import MetricRecord, RecordDict

    from server.aggregation import mean_of_reported

    replies = [RecordDict({"metrics": MetricRecord({"num-examples": 10, "loss.image_image": 2.0, "loss.total": 1.0})}),
               RecordDict({"metrics": MetricRecord({"num-examples": 30, "loss.total": 3.0})})]
    mean = mean_of_reported(replies, "num-examples")
    assert mean["loss.image_image"] == 2.0 and mean["loss.total"] == pytest.approx(2.5)


@pytest.fixture(scope="module")
def volume_records(small_phantom):
    records = [r for m in ("manifest", "volumes") for r in load_manifest(small_phantom / "site_0" / f"{m}.csv").records]
    assert any(r.is_volume for r in records)
    return records


def test_slice_adapter_learns_from_volumes_and_they_pair_with_the_same_eyes_cfp(tiny_model_cfg, volume_records):
    cfg_model = dataclasses.replace(tiny_model_cfg, volume_max_slices=16)
    ds = RetinaDataset(volume_records, 64, train=True, pair_modalities=True, volume_slices=4, volume_table=16)
    volume = next(i for i, r in enumerate(volume_records) if r.is_volume)
    item = ds[(volume, 3)]
    assert item["image"].shape == (4, 3, 64, 64) and item["positions"].tolist() == sorted(item["positions"].tolist())
    cfp_partner = ds.records[ds.partners[volume][0]]
    assert (cfp_partner.patient_id, cfp_partner.eye) == (volume_records[volume].patient_id, volume_records[volume].eye)
    seed_everything(0)
    model = build_model(cfg_model)
    before = {k: v.clone() for k, v in model.volume_pool.state_dict().items()}
    trainer = LocalTrainer(model, EyeCLIPObjective(LossConfig()), TrainConfig(steps=2, batch_size=8, seed=0,
                                                                               device="cpu", warmup_steps=1),
                           torch.device("cpu"))
    stats = trainer.run(ds, 2, progress=False)
    assert stats.paired > 0 and "image_image" in stats.losses
    changed = [k for k, v in model.volume_pool.state_dict().items() if not torch.equal(v, before[k])]
    assert {"positions.weight", "q.weight", "kv.weight", "out.weight"} <= set(changed)


def test_volumes_round_trip_through_the_evaluator(tiny_model_cfg, small_phantom):
    volumes = load_manifest(small_phantom / "heldout" / "volumes.csv").records
    assert all(r.frames == 16 for r in volumes)
    model = build_model(dataclasses.replace(tiny_model_cfg, volume_max_slices=16))
    embedded = embed_records(model, volumes[:3], 64, torch.device("cpu"))
    assert embedded.embeddings.shape == (3, 256)
    # The same volume through the adapter by hand: its 16 slices, positions 0..15.
    with torch.no_grad():
        by_hand = model.encode_volume(to_model_input(load_slices(volumes[0], 64), model.input_norm)[None])
    assert np.allclose(embedded.embeddings[0], by_hand[0].numpy(), atol=1e-5)
    cfg = EvalConfig(sets=[EvalSetConfig(name="vol", path=str(small_phantom / "heldout" / "volumes.csv"))],
                     linear_probe=False, kshot=[], retrieval=False)
    assert evaluate_model(model, cfg, 64, torch.device("cpu"))["zero_shot"]["vol/OCT"]["n"] == len(volumes)


def test_report_names_terms_configured_off_and_counts_pairs(tmp_path):
    from shared_model.reporting.run_report import build_report

    (tmp_path / "config.yaml").write_text(
        "model:\n  name: tiny\n  mae: {enabled: false}\nloss: {image_text: 0.75, image_image: 0.75, mae: 1.0}\n"
        "data: {pair_modalities: false}\nprivacy: {mode: none}\n")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 2.0, "loss_image_text": 2.0}) + "\n")
    page = build_report(tmp_path)
    assert "off (data.pair_modalities=false)" in page and "off (no MAE decoder" in page
    (tmp_path / "config.yaml").write_text(
        "model:\n  name: tiny\nloss: {image_text: 0.75, image_image: 0.75, mae: 1.0}\n"
        "federation: {rounds: 1}\nprivacy: {mode: none}\n")
    sites = {"site_0": {"num-examples": 8, "loss.total": 2.0, "anchors": 320, "paired-anchors": 80},
             "site_1": {"num-examples": 8, "loss.total": 2.0, "anchors": 320, "paired-anchors": 0}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1, "sites": sites, "bytes_sent": 0,
                                                        "bytes_received": 0}) + "\n")
    page = build_report(tmp_path)
    assert "<td>site_0</td><td>320</td><td>80</td><td>25%</td>" in page
    assert "<td>site_1</td><td>320</td><td>0</td><td>0%</td>" in page


def test_simulated_phantom_sites_take_every_manifest_of_their_folder():
    from shared_model.data.sites import simulated_site_manifests

    cfg = compose_app("federation", ["data=phantom_volumes", "phantom.root=/p", "federation.sites=2"])
    assert simulated_site_manifests(cfg) == [["/p/site_0/manifest.csv", "/p/site_0/volumes.csv"],
                                             ["/p/site_1/manifest.csv", "/p/site_1/volumes.csv"]]
    listed = compose_app("federation", ["federation.site_manifests=['/a/cfp.csv,/a/oct.csv','/b/x.csv']"])
    assert simulated_site_manifests(listed) == [["/a/cfp.csv", "/a/oct.csv"], ["/b/x.csv"]]
