"""Checkpoints round-trip, and a wrong architecture, a corrupt file or a foreign folder fail clearly."""

import dataclasses
import json

import pytest
import torch

from shared_model.model import build_model
from shared_model.model.checkpoint import load_checkpoint, load_weights, save_checkpoint
from shared_model.model.state_dicts import CheckpointError
from shared_model.model.weights_init import load_image_tower_weights


@pytest.fixture(scope="module")
def saved(tiny_model_cfg, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)
    folder = save_checkpoint(model, tiny_model_cfg, tmp_path_factory.mktemp("ckpt") / "c", extra={"step": 3})
    return model, folder


def test_round_trip_gives_identical_weights_and_config(saved, tiny_model_cfg):
    model, folder = saved
    loaded, cfg = load_checkpoint(folder)
    assert cfg == tiny_model_cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    meta = json.loads((folder / "config.json").read_text())
    assert meta["retinafl_version"] and meta["extra"] == {"step": 3}


def test_wrong_architecture_is_named(saved, tiny_model_cfg):
    _, folder = saved
    wider = dataclasses.replace(tiny_model_cfg, image=dataclasses.replace(tiny_model_cfg.image, width=96, num_heads=3))
    with pytest.raises(CheckpointError, match=r"does not match.*shape mismatches.*"
                                              r"image_proj.weight: file \(256, 192\) vs model \(256, 96\)"):
        load_weights(build_model(wider, pretrained=False), folder / "model.safetensors")
    deeper = dataclasses.replace(tiny_model_cfg, image=dataclasses.replace(tiny_model_cfg.image, depth=5))
    with pytest.raises(CheckpointError, match=r"missing keys.*visual.blocks.4"):
        load_weights(build_model(deeper, pretrained=False), folder / "model.safetensors")


def test_truncated_weights_are_detected(saved, tmp_path):
    _, folder = saved
    copy = tmp_path / "c"
    copy.mkdir()
    (copy / "config.json").write_bytes((folder / "config.json").read_bytes())
    data = (folder / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(copy)


def test_folder_without_config_or_with_bad_json(tmp_path):
    with pytest.raises(CheckpointError, match="not a RetinaFL checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_checkpoint(tmp_path)


def test_image_tower_init_from_mae_style_state_dict(tiny_model_cfg, tmp_path):
    torch.manual_seed(1)
    source = build_model(tiny_model_cfg, pretrained=False).visual
    # MAE/RETFound naming: flat cls_token, learned pos_embed, a head; wrapped in {"model": ...}
    state = {("cls_token" if k == "cls_token.token" else k): v for k, v in source.state_dict().items()}
    state["pos_embed"] = torch.zeros(1, 65, 192)
    state["head.weight"] = torch.zeros(5, 192)
    torch.save({"model": state}, tmp_path / "retfound_like.pth")
    target = build_model(tiny_model_cfg, pretrained=False).visual
    load_image_tower_weights(target, str(tmp_path / "retfound_like.pth"))
    assert torch.equal(target.cls_token.token, source.cls_token.token)
    assert torch.equal(target.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="wrong model size"):
        load_image_tower_weights(target, str(tmp_path / "wrong.pth"))
