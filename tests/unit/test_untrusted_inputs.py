"""Nothing received is unpickled: a crafted pickle in a checkpoint, a trainer state or a site's
update is rejected without running its payload (a canary file that unpickling would create)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.rounds import screen_replies
from shared_model.model.state_dicts import CheckpointError, read_state_dict


class Canary:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_the_canary_fires_when_unpickled(tmp_path):  # positive control
    pickle.loads(pickle.dumps(Canary(tmp_path / "fired")))
    assert (tmp_path / "fired").exists()


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_crafted_checkpoint_is_rejected_without_running(tmp_path, name):
    canary = tmp_path / "fired"
    path = tmp_path / name
    torch.save({"weight": torch.zeros(2), "payload": Canary(canary)}, path)
    with pytest.raises(CheckpointError, match=name):
        read_state_dict(path)
    assert not canary.exists()


def test_crafted_trainer_state_is_rejected_without_running(tmp_path):
    from shared_model.train.trainer import STATE_FILE

    canary = tmp_path / "fired"
    torch.save({"optimizer": Canary(canary)}, tmp_path / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / STATE_FILE, weights_only=True)  # what LocalTrainer.load_state calls
    assert not canary.exists()


def test_crafted_update_is_rejected_without_running(tmp_path):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    canary = tmp_path / "fired"
    buffer = io.BytesIO()
    np.save(buffer, np.array([Canary(canary)], dtype=object), allow_pickle=True)
    crafted = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    content = RecordDict({"arrays": ArrayRecord({"w": crafted}),
                          "metrics": MetricRecord({"num-examples": 1, "server-round": 1}),
                          "site": ConfigRecord({"name": "mallory"})})
    reply = Message(content=content, dst_node_id=0, message_type="train")
    accepted, rejected = screen_replies([reply], 1, {"w"})
    assert accepted == [] and "mallory: update cannot be decoded" in rejected[0]
    assert not canary.exists()
