"""Nothing received is unpickled: a crafted pickle handed to any of our loaders (a checkpoint
folder, a weights file a config names, a text-model folder, a trainer state, a site's update) is
rejected without running its payload (a canary file that unpickling would create)."""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from server.aggregation import decode_updates
from server.rounds import screen_replies
from server.update_screen import update_mismatch
from shared_model.config import TrainConfig
from shared_model.file_digest import sha256_file
from shared_model.model.checkpoint import CONFIG, FORMAT, WEIGHTS, load_checkpoint, load_weights
from shared_model.model.state_dicts import CheckpointError
from shared_model.model.text_tower import TextTower, default_text_model_path
from shared_model.model.weights_init import load_image_tower_weights
from shared_model.train.trainer import STATE_FILE, LocalTrainer


class Canary:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _crafted(path: Path, canary: Path) -> Path:
    """A torch file whose tensors come with a pickled payload."""
    torch.save({"weight": torch.zeros(2), "payload": Canary(canary)}, path)
    return path


def test_the_canary_fires_when_unpickled(tmp_path):  # positive control
    torch.load(_crafted(tmp_path / "model.pt", tmp_path / "fired"), weights_only=False)
    assert (tmp_path / "fired").exists()


def test_a_received_checkpoint_folder_is_rejected_without_running(tiny_model_cfg, tmp_path):
    """What ``retina-eval checkpoint=...`` loads: a config that verifies, weights that are a pickle."""
    canary = tmp_path / "fired"
    weights = _crafted(tmp_path / WEIGHTS, canary)
    (tmp_path / CONFIG).write_text(json.dumps({"format": FORMAT, "model": asdict(tiny_model_cfg),
                                               "weights_sha256": sha256_file(weights)}))
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: cannot be read as a state dict")):
        load_checkpoint(tmp_path)
    assert not canary.exists()


LOADERS = {  # a weights file named in a config: resumed weights, model.image.init_checkpoint
    "load_weights": lambda path: load_weights(nn.Linear(2, 2), path),
    "load_image_tower_weights": lambda path: load_image_tower_weights(nn.Linear(2, 2), str(path)),
}


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_crafted_weights_file_is_rejected_without_running(tmp_path, loader, name):
    canary = tmp_path / "fired"
    path = _crafted(tmp_path / name, canary)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: cannot be read as a state dict")):
        LOADERS[loader](path)
    assert not canary.exists()


def test_a_crafted_text_model_folder_is_rejected_without_running(tmp_path):
    """``model.text.path`` naming a folder whose weights are a pickled ``pytorch_model.bin``."""
    canary = tmp_path / "fired"
    folder = tmp_path / "text"
    shutil.copytree(default_text_model_path(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    _crafted(folder / "pytorch_model.bin", canary)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        TextTower(str(folder), embed_dim=8)
    assert not canary.exists()


def _local_trainer():
    return LocalTrainer(nn.Linear(2, 2), None, TrainConfig(device="cpu"), torch.device("cpu")), STATE_FILE


def _generator_trainer():
    from shared_model.conf import compose_app
    from synthetic.training import STATE_FILE as GENERATOR_STATE_FILE
    from synthetic.training import GeneratorTrainer

    return GeneratorTrainer(nn.Linear(2, 2), compose_app("synth", ["train.device=cpu"]), None), GENERATOR_STATE_FILE


# Each trainer and its state file; each reads the file before touching its model, so a stand-in model will do.
TRAINERS = {"LocalTrainer": _local_trainer, "GeneratorTrainer": _generator_trainer}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_a_crafted_trainer_state_is_rejected_without_running(tmp_path, trainer):
    """What resuming a run, or a site's next round, reads back: refused by torch's weights-only
    unpickler, reported as a CheckpointError naming the file (one line for the user)."""
    made, state_file = TRAINERS[trainer]()
    canary = tmp_path / "fired"
    torch.save({"optimizer": Canary(canary), "step": 3}, tmp_path / state_file)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / state_file}: cannot be read as a trainer state")):
        made.load_state(tmp_path)
    assert not canary.exists()


def _crafted_reply(canary: Path) -> Message:
    """A site's train reply whose one weight is a pickled object array."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    buffer = io.BytesIO()
    np.save(buffer, np.array([Canary(canary)], dtype=object), allow_pickle=True)
    crafted = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    content = RecordDict({"arrays": ArrayRecord({"w": crafted}),
                          "metrics": MetricRecord({"num-examples": 1, "server-round": 1}),
                          "site": ConfigRecord({"name": "mallory"})})
    return Message(content=content, dst_node_id=0, message_type="train")


GLOBAL = ArrayRecord({"w": Array(np.zeros(1, np.float32))})


def test_a_crafted_update_is_rejected_without_running(tmp_path):
    """Plain weights, screened against the global model as the round loop does."""
    canary = tmp_path / "fired"
    accepted, rejected = screen_replies([_crafted_reply(canary)], 1,
                                        lambda msg: update_mismatch(msg.content["arrays"], GLOBAL))
    assert accepted == [] and rejected[0].startswith("mallory: 'w' cannot be decoded as a plain array")
    assert not canary.exists()


def test_a_crafted_bf16_delta_is_rejected_without_running(tmp_path):
    canary = tmp_path / "fired"
    reply = _crafted_reply(canary)
    kept, rejected = decode_updates([reply], GLOBAL, "bf16-delta")
    assert kept == [] and rejected[id(reply)].startswith("update is not a bf16-delta of the global model")
    assert not canary.exists()
