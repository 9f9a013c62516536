"""The streaming FedAvg mean (server/streaming_mean.py) equals Flower's ``aggregate_arrayrecords``
on every kind of array a reply can carry, and the registry's FedAvg/FedProx use it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from server.aggregation import build_strategy
from server.streaming_mean import StreamingFedAvg, StreamingFedProx, array_view, weighted_mean
from shared_model.config import FederationConfig, StrategyConfig


def _reply(rng: np.random.Generator, examples: int) -> RecordDict:
    arrays = {"w": rng.standard_normal((33, 7)).astype(np.float32),
              "f": np.asfortranarray(rng.standard_normal((5, 4))),  # float64, Fortran order
              "scalar": np.array(rng.standard_normal(), dtype=np.float32),
              "count": rng.integers(0, 10, (3,)),  # integers become float64, as in Flower
              "half": rng.standard_normal(6).astype(np.float16)}
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                       "metrics": MetricRecord({"num-examples": examples})})


def test_weighted_mean_matches_flower():
    rng = np.random.default_rng(0)
    replies = [_reply(rng, n) for n in (3, 50, 7)]
    ours, flowers = weighted_mean(replies, "num-examples"), aggregate_arrayrecords(replies, "num-examples")
    assert list(ours) == list(flowers)
    for key in flowers:
        a, b = ours[key].numpy(), flowers[key].numpy()
        assert a.shape == b.shape and a.dtype == b.dtype, key
        assert np.allclose(a, b, rtol=1e-3 if a.dtype == np.float16 else 1e-6), key


def test_running_sums_kept_across_rounds_do_not_leak_into_earlier_aggregates():
    rng = np.random.default_rng(1)
    sums: dict = {}
    first_replies = [_reply(rng, 4), _reply(rng, 9)]
    first = weighted_mean(first_replies, "num-examples", sums)
    kept = {k: first[k].numpy().copy() for k in first}
    second = weighted_mean([_reply(rng, 2), _reply(rng, 5)], "num-examples", sums)
    assert all(np.array_equal(first[k].numpy(), kept[k]) for k in first)
    assert not np.allclose(second["w"].numpy(), kept["w"])
    assert np.allclose(kept["w"], aggregate_arrayrecords(first_replies, "num-examples")["w"].numpy(), rtol=1e-6)


def test_array_view_reads_in_place():
    array = Array(np.arange(12, dtype=np.float32).reshape(3, 4))
    view = array_view(array)
    assert np.array_equal(view, np.arange(12).reshape(3, 4)) and not view.flags.writeable
    assert np.shares_memory(view, np.frombuffer(array.data, dtype=np.uint8))


@pytest.mark.parametrize("name, cls", [("fedavg", StreamingFedAvg), ("fedprox", StreamingFedProx)])
def test_registry_strategies_aggregate_with_the_streaming_mean(name, cls):
    assert type(build_strategy(StrategyConfig(name=name), FederationConfig())) is cls
