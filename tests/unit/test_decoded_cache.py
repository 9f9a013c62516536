"""The decoded-image cache: items from it equal a fresh decode (up to uint8 rounding) with the same
random draws, volumes / 16-bit / unreadable files bypass it, an edited manifest or replaced image
gives a new cache, a damaged cache file is rebuilt, an interrupted fill leaves nothing that opens,
and ``data.cache_dir`` puts it in the site's state dir."""

import logging
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from shared_model.conf import compose_app
from shared_model.data import decoded_cache
from shared_model.data.dataset import RetinaDataset
from shared_model.data.decoded_cache import open_cache
from shared_model.data.manifest import load_manifest
from shared_model.train.centralized import build_training_dataset

SIZE = 32
ROUNDING = 0.5 / 255 + 1e-6  # uint8 rounding of a value in [0, 1], plus float32 error


def _fundus(seed: int) -> np.ndarray:
    """A 64 x 80 colour disc on black (the FOV crop has work to do) with random texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :80]
    disc = ((yy - 32) ** 2 + (xx - 40) ** 2) < 28 ** 2
    return (rng.integers(40, 255, (64, 80, 3)) * disc[..., None]).astype(np.uint8)


def _write_site(folder, n_cfp: int = 4) -> tuple:
    """A manifest of colour fundus JPEGs, grey OCT PNGs, a 16-bit PNG, an OCT volume and a broken file."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_cfp):
        Image.fromarray(_fundus(i)).save(folder / f"images/cfp{i}.jpg", quality=90)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (60, 64), dtype=np.uint8)).save(
            folder / f"images/oct{i}.png")
        rows += [[f"images/cfp{i}.jpg", f"p{i}", "OD", "CFP", "amd" if i % 2 else "normal", "", ""],
                 [f"images/oct{i}.png", f"p{i}", "OD", "OCT", "amd" if i % 2 else "normal", "", ""]]
    deep = np.random.default_rng(9).integers(0, 65535, (48, 48), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "images/deep.png")
    slices = [Image.fromarray(np.full((40, 40), 30 * k, dtype=np.uint8)) for k in range(5)]
    slices[0].save(folder / "images/volume.tif", save_all=True, append_images=slices[1:])
    (folder / "images/broken.png").write_bytes(b"\x89PNG broken")
    rows += [["images/deep.png", "p8", "OS", "OCT", "normal", "", ""],
             ["images/volume.tif", "p9", "OS", "OCT", "normal", "", "5"],
             ["images/broken.png", "p10", "OS", "CFP", "glaucoma", "", ""]]
    path = folder / "manifest.csv"
    pd.DataFrame(rows, columns=["image", "patient_id", "eye", "modality", "labels", "report", "frames"]).to_csv(
        path, index=False)
    return path, load_manifest(path).records


def _assert_same_items(records, cache, seeds=(3, 11)) -> None:
    """Every item with the cache equals the fresh one: images up to rounding, everything else exactly."""
    fresh = RetinaDataset(records, SIZE, train=True, text_source="caption", pair_modalities=True)
    cached = RetinaDataset(records, SIZE, train=True, text_source="caption", pair_modalities=True, cache=cache)
    for index in range(len(records)):
        for seed in seeds:
            a, b = fresh[(index, seed)], cached[(index, seed)]
            assert a.keys() == b.keys()
            for key, value in a.items():
                if key in ("image", "partner"):
                    assert value.shape == b[key].shape and value.is_contiguous() == b[key].is_contiguous()
                    assert (value - b[key]).abs().max() <= ROUNDING, (records[index].image, key)
                elif isinstance(value, torch.Tensor):
                    assert torch.equal(value, b[key]), (records[index].image, key)
                else:
                    assert value == b[key], (records[index].image, key)


def test_cached_items_equal_a_fresh_decode_and_bypassed_files_are_decoded(tmp_path):
    _, records = _write_site(tmp_path / "site")
    cache = open_cache(records, SIZE, tmp_path / "cache")
    kinds = {r.image.name: c for r, c in zip(records, cache.channels)}
    assert kinds == {**{f"cfp{i}.jpg": 3 for i in range(4)}, **{f"oct{i}.png": 1 for i in range(4)},
                     "deep.png": 0, "volume.tif": 0, "broken.png": 0}
    _assert_same_items(records, cache)
    # The cache really serves the pixels: a resampled image is not uint8-exact, its cached copy is.
    fresh = RetinaDataset(records, SIZE)[(0, 3)]["image"]
    served = RetinaDataset(records, SIZE, cache=cache)[(0, 3)]["image"]
    assert not torch.equal(fresh, served) and torch.equal(served * 255, (served * 255).round())
    # A loader worker gets the cache without its mapped pixels and maps the file itself.
    copy = pickle.loads(pickle.dumps(cache))
    assert copy._pixels is None and torch.equal(copy.get(0)[0], served)
    assert "error" in RetinaDataset(records, SIZE, cache=cache)[(len(records) - 1, 0)]


def test_an_open_cache_is_reused_and_a_label_edit_keeps_it(tmp_path, monkeypatch):
    path, records = _write_site(tmp_path / "site")
    first = open_cache(records, SIZE, tmp_path / "cache")
    table = pd.read_csv(path, keep_default_na=False)
    table.loc[0, "labels"] = "glaucoma"
    table.to_csv(path, index=False)
    monkeypatch.setattr(decoded_cache, "_fill", lambda *a: pytest.fail("a valid cache was filled again"))
    assert open_cache(load_manifest(path).records, SIZE, tmp_path / "cache").path == first.path


def test_an_edited_manifest_or_replaced_image_gives_a_new_cache(tmp_path):
    path, records = _write_site(tmp_path / "site")
    folder = tmp_path / "cache"
    first = open_cache(records, SIZE, folder)
    table = pd.read_csv(path, keep_default_na=False)
    table.iloc[::-1].to_csv(path, index=False)  # reordered rows
    reordered = load_manifest(path).records
    second = open_cache(reordered, SIZE, folder)
    assert second.path != first.path and not first.path.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted([second.path.name, second.path.stem + ".json"])
    _assert_same_items(reordered, second, seeds=(5,))
    Image.fromarray(_fundus(7)).save(tmp_path / "site/images/cfp0.jpg", quality=90)  # same name, new pixels
    os.utime(tmp_path / "site/images/cfp0.jpg", ns=(1, 1))
    third = open_cache(reordered, SIZE, folder)
    assert third.path != second.path
    _assert_same_items(reordered, third, seeds=(5,))
    assert open_cache(reordered, 16, folder).path != third.path and third.path.exists()  # another size: kept


@pytest.mark.parametrize("damage", ["truncated array", "garbage index", "missing array", "wrong shape"])
def test_a_damaged_cache_is_named_and_rebuilt(tmp_path, caplog, damage):
    _, records = _write_site(tmp_path / "site")
    cache = open_cache(records, SIZE, tmp_path / "cache")
    index = cache.path.with_suffix(".json")
    if damage == "truncated array":
        os.truncate(cache.path, cache.path.stat().st_size // 2)
    elif damage == "garbage index":
        index.write_text("{not json")
    elif damage == "missing array":
        cache.path.unlink()
    else:
        np.save(cache.path, np.zeros((len(records), SIZE, SIZE, 1), np.uint8))
    with caplog.at_level(logging.WARNING, logger="shared_model.data.decoded_cache"):
        rebuilt = open_cache(records, SIZE, tmp_path / "cache")
    assert str(cache.path) in caplog.text and "rebuilding" in caplog.text
    assert rebuilt.path == cache.path
    _assert_same_items(records, rebuilt, seeds=(2,))


def test_an_interrupted_fill_leaves_nothing_that_opens(tmp_path, monkeypatch):
    _, records = _write_site(tmp_path / "site")
    folder = tmp_path / "cache"
    real_read = decoded_cache.read_frames
    calls = []

    def dies_on_the_fifth(record, size):
        calls.append(record)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_read(record, size)

    monkeypatch.setattr(decoded_cache, "read_frames", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        open_cache(records, SIZE, folder)
    assert list(folder.iterdir()) == []
    monkeypatch.setattr(decoded_cache, "read_frames", real_read)
    _assert_same_items(records, open_cache(records, SIZE, folder), seeds=(1,))


def test_a_cache_of_other_records_is_refused(tmp_path):
    _, records = _write_site(tmp_path / "site")
    cache = open_cache(records, SIZE, tmp_path / "cache")
    with pytest.raises(ValueError, match="holds 11 images at 32 px, not these 10 at 32 px"):
        RetinaDataset(records[:-1], SIZE, cache=cache)


def test_data_cache_dir_lies_in_the_site_state_dir(tmp_path):
    path, records = _write_site(tmp_path / "site")
    cfg = compose_app("train", ["+experiment=demo", "loss.image_image=0", f"data.manifests=[{path}]",
                                "data.cache_dir=decoded", f"run_dir={tmp_path / 'run'}"])
    site = build_training_dataset(records, cfg, site="clinic a", state_dir=tmp_path / "state")
    assert site.cache.path.parent == tmp_path / "state" / "decoded"
    assert site.cache.path.name.startswith(f"clinic_a-{cfg.model.image.image_size}px-")
    central = build_training_dataset(records, cfg)
    assert central.cache.path.parent == tmp_path / "run" / "decoded"
    off = compose_app("train", ["+experiment=demo", "loss.image_image=0"])
    assert build_training_dataset(records, off).cache is None
