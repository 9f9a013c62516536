"""Updates that do not fit the global model are rejected before anything of them is added, as
plain weights and as bf16 or int8 deltas: without the screen a ``(1,)`` array is broadcast into every
element of a ``(3, 4)`` weight, an extra or missing key or an int array reaches the aggregator.
(SecAgg+ masked vectors: tests/unit/test_secure_aggregation.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from server.rounds import train_round
from shared_model.config import FederationConfig
from shared_model.model.update_codec import encode_update
from tests.fixtures.in_process_grid import InProcessGrid, aggregation

GLOBAL = {"w": torch.zeros(3, 4), "b": torch.ones(2), "scale": torch.tensor(2.0)}

POISONED = {  # name -> (update the poisoned site sends instead of its weights, what the reason names)
    "an extra key": (lambda u: {**u, "extra": u["b"]}, ["unknown weight 'extra'"]),
    "a missing key": (lambda u: {k: v for k, v in u.items() if k != "b"}, ["missing 'b'"]),
    "an int array": (lambda u: {**u, "w": np.full((3, 4), 100, np.int64)}, ["'w'", "int64[3, 4]"]),
    "a 0-d array for a matrix": (lambda u: {**u, "w": np.asarray(u["w"].reshape(-1)[0])}, ["'w'", "[]"]),
    "a (1,) array for a matrix": (lambda u: {**u, "w": u["w"].reshape(-1)[:1]}, ["'w'", "[1]"]),
    "a (1,) array for a 0-d weight": (lambda u: {**u, "scale": u["scale"].reshape(1)}, ["'scale'", "[1]"]),
}


def _fed(encoding: str) -> FederationConfig:
    return FederationConfig(rounds=1, min_sites=2, min_available=3, connect_timeout=0.5, round_timeout=1.0,
                            round_retries=0, update_encoding=encoding)


def _site(name: str, value: float, encoding: str, poison=None):
    """A site whose local weights are all ``value``; ``poison`` rewrites the update it sends."""

    def handle(msg: Message) -> Message:
        local = {k: torch.full_like(v, value) for k, v in GLOBAL.items()}
        update, _ = encode_update(encoding, local, GLOBAL)
        if poison is not None:
            update = poison(update)
        metrics = MetricRecord({"num-examples": 10, "server-round": int(msg.content["config"]["server-round"])})
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in update.items()}),
                                   "metrics": metrics, "site": ConfigRecord({"name": name})}), reply_to=msg)

    return handle


@pytest.mark.parametrize("encoding", ["fp32", "bf16-delta", "int8-delta"])
@pytest.mark.parametrize("case", list(POISONED))
def test_an_update_that_does_not_fit_the_global_model_is_rejected_before_aggregation(encoding, case):
    poison, named = POISONED[case]
    grid = InProcessGrid({1: _site("a", 1.0, encoding), 2: _site("b", 3.0, encoding),
                          3: _site("evil", 1000.0, encoding, poison)})
    aggregate, report = train_round(grid, aggregation(_fed(encoding)),
                                    ArrayRecord(GLOBAL), 1, _fed(encoding), 0)
    for key, value in GLOBAL.items():  # the honest mean, untouched by the poisoned site
        assert aggregate[key].numpy().shape == tuple(value.shape)
        assert np.allclose(aggregate[key].numpy(), 2.0)
    assert sorted(report.sites) == ["a", "b"]
    assert len(report.rejected) == 1 and report.rejected[0].startswith("evil: ")
    assert all(part in report.rejected[0] for part in named) and "rejected" in report.rejected[0]


def test_a_float_array_whose_bytes_disagree_with_its_metadata_is_screened_by_its_bytes():
    """The shape the site declares beside the bytes is not what the aggregator reads: the
    screen reads the .npy header, as aggregation does."""
    def handle(msg: Message) -> Message:
        reply = _site("evil", 1000.0, "fp32")(msg)
        arrays = dict(reply.content["arrays"].items())
        honest, small = arrays["w"], Array(arrays["w"].numpy().reshape(-1)[:1])
        arrays["w"] = Array(dtype=honest.dtype, shape=honest.shape, stype=honest.stype, data=small.data)
        reply.content["arrays"] = ArrayRecord(arrays)
        return reply

    grid = InProcessGrid({1: _site("a", 1.0, "fp32"), 2: _site("b", 3.0, "fp32"), 3: handle})
    aggregate, report = train_round(grid, aggregation(_fed("fp32")), ArrayRecord(GLOBAL),
                                    1, _fed("fp32"), 0)
    assert np.allclose(aggregate["w"].numpy(), 2.0)
    assert report.rejected == ["evil: 'w' is float32[1], the global model's is float32[3, 4] (update rejected)"]
