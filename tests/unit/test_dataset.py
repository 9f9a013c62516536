"""The data set: modality pairing by patient-eye, captions vs reports, reproducible per-sample
randomness, unreadable images skipped and counted, resumable batch order, public-layout adapters."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from shared_model.data.adapters import from_class_folders, from_flair_csv
from shared_model.data.dataset import EpochBatchSampler, RetinaDataset, collate
from shared_model.data.manifest import load_manifest, validate_table
from shared_model.data.preprocess import normalize


@pytest.fixture()
def site(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for p in range(3):
        for modality in ("CFP", "OCT"):
            name = f"images/p{p}_{modality}.png"
            arr = np.random.default_rng(p).integers(0, 255, (32, 40, 3 if modality == "CFP" else 1), dtype=np.uint8)
            Image.fromarray(arr.squeeze()).save(tmp_path / name)
            rows.append([name, f"p{p}", "OD", modality, "", "amd" if p else "normal", f"Report {p} {modality}.",
                         "train"])
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    rows.append(["images/broken.png", "p9", "OS", "CFP", "", "glaucoma", "", "train"])
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["image", "patient_id", "eye", "modality", "study_id", "labels", "report",
                                "split"]).to_csv(path, index=False)
    return load_manifest(path).records


def test_pairs_are_other_modalities_of_the_same_eye(site):
    ds = RetinaDataset(site, 32, pair_modalities=True)
    for i, record in enumerate(site):
        for j in ds.partners[i]:
            other = site[j]
            assert ((other.patient_id, other.eye) == (record.patient_id, record.eye)
                    and other.modality != record.modality)
    assert ds.partners[-1] == []


def test_items_are_reproducible_per_seed_and_vary_across_seeds(site):
    ds = RetinaDataset(site, 32, train=True, text_source="caption", pair_modalities=True)
    a, b, c = ds[(0, 7)], ds[(0, 7)], ds[(0, 8)]
    assert torch.equal(a["aug"], b["aug"]) and a["text"] == b["text"]
    assert not torch.equal(a["aug"], c["aug"])
    assert a["image"].shape == (3, 32, 32) and "partner" in a
    seen = [collate([item]).model_input(torch.device("cpu"), "imagenet") for item in (a, b, c)]
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


def test_evaluation_items_carry_no_augmentation(site):
    item = RetinaDataset(site, 32, train=False)[(0, 7)]
    batch = collate([item])
    assert item["aug"] is None and batch.aug is None
    assert torch.equal(batch.model_input(torch.device("cpu"), "imagenet"), normalize(item["image"])[None])


def test_text_sources(site):
    assert RetinaDataset(site, 32, text_source="report")[(1, 0)]["text"] == "Report 0 OCT."
    caption = RetinaDataset(site, 32, text_source="caption")[(1, 0)]["text"]
    assert "Report" not in caption and caption


def test_unreadable_images_are_skipped_and_counted(site):
    ds = RetinaDataset(site, 32, pair_modalities=True)
    batch = collate([ds[(len(site) - 1, 0)], ds[(0, 0)], ds[(2, 0)]])
    assert batch.n_anchors == 2 and len(batch.skipped) == 1 and "broken.png" in batch.skipped[0]
    assert batch.images.shape[0] == 4  # two anchors + their two partners
    assert batch.pair_index.tolist() == [2, 3]
    assert batch.label_ids[0] != batch.label_ids[1]  # normal vs amd
    assert batch.label_ids[1] == batch.label_ids[3]  # amd anchor and its amd partner


def test_batch_sampler_is_deterministic_and_resumes_mid_epoch():
    full = list(EpochBatchSampler(10, 3, seed=5, epoch=2))
    assert len(full) == 3 and full == list(EpochBatchSampler(10, 3, seed=5, epoch=2))
    assert list(EpochBatchSampler(10, 3, seed=5, epoch=2, skip_batches=1)) == full[1:]
    assert full != list(EpochBatchSampler(10, 3, seed=5, epoch=3))
    indices = [i for batch in full for i, _ in batch]
    assert len(set(indices)) == 9
    with pytest.raises(ValueError, match="batch_size=20"):
        EpochBatchSampler(10, 20, seed=0)


def test_flair_csv_adapter_on_the_real_oct_set(real_dir):
    csv = real_dir / "oct_kermany_heysaw" / "labels.csv"
    table = from_flair_csv(csv, csv.parent, modality="OCT")
    records = validate_table(table, csv, csv.parent).records
    assert len(records) == 32 and {r.labels[0] for r in records} == {"cnv", "dme", "drusen", "normal"}
    assert records[0].patient_id == "6294785" and all(r.image.is_file() for r in records)


def test_class_folder_adapter(tmp_path):
    for cls in ("glaucoma", "Normal"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / cls / "a.png")
    records = validate_table(from_class_folders(tmp_path, tmp_path), tmp_path, tmp_path).records
    assert sorted(r.labels[0] for r in records) == ["glaucoma", "normal"]
