"""Replies folded into the aggregate as they arrive (server/round_fold.py, server/reply_stream.py):
the coordinator holds one update at a time, and the fold gives what Flower's strategies give on
the whole list — FedAdam's step, client-level DP's clipped mean — with the adaptive clipping norm
moving the way Andrew et al. (2021) move it."""

from __future__ import annotations

import copy
import gc
import math
import weakref

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAdam

from server.rounds import train_round
from shared_model import wire
from shared_model.config import FederationConfig, PrivacyConfig
from tests.fixtures.in_process_grid import InProcessGrid, aggregation

SHAPES = {"w": (6, 5), "b": (5,)}
GLOBAL = {k: np.full(shape, 0.5, np.float32) for k, shape in SHAPES.items()}


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def fed(**kw) -> FederationConfig:
    base = dict(rounds=1, min_sites=2, min_available=2, connect_timeout=0.5, round_timeout=2.0, round_retries=0)
    return FederationConfig(**{**base, **kw})


def update(node: int) -> dict[str, np.ndarray]:
    """Node ``node``'s weights: the global ones moved by a change of norm about 2 * node."""
    rng = np.random.default_rng(node)
    return {k: (v + node * rng.standard_normal(v.shape) / 3).astype(np.float32) for k, v in GLOBAL.items()}


class Held:
    """The updates the sites made, and how many of them were still alive each time a new one was made."""

    def __init__(self):
        self.made: list[weakref.ref] = []
        self.alive: list[int] = []

    def new(self, arrays: ArrayRecord) -> ArrayRecord:
        gc.collect()
        self.alive.append(sum(ref() is not None for ref in self.made))
        self.made.append(weakref.ref(arrays))
        return arrays


def site(node: int, held: Held | None = None, weight_key: str = wire.NUM_EXAMPLES):
    """A site replying with :func:`update` (counted by ``held``)."""

    def handle(msg: Message) -> Message:
        arrays = record(update(node))
        if held is not None:
            held.new(arrays)
        metrics = MetricRecord({weight_key: float(node if weight_key == wire.NUM_EXAMPLES else 1.0),
                                wire.SERVER_ROUND: int(msg.content["config"]["server-round"])})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics, "site": ConfigRecord({"name": f"s{node}"})}),
                       reply_to=msg)

    return handle


def replies_for(nodes: list[int], weight_key: str) -> list[Message]:
    """The sites' replies as a list, for Flower's strategies to aggregate all at once."""
    out = []
    for node in nodes:
        metrics = MetricRecord({weight_key: float(node if weight_key == wire.NUM_EXAMPLES else 1.0)})
        content = RecordDict({"arrays": record(update(node)), "metrics": metrics})
        out.append(Message(content, dst_node_id=node, message_type="train"))
    return out


def test_the_coordinator_holds_one_update_at_a_time():
    held = Held()
    nodes = list(range(1, 9))
    grid = InProcessGrid({n: site(n, held) for n in nodes}, lazy=True)
    aggregate, report = train_round(grid, aggregation(fed()), record(GLOBAL), 1, fed(), 0)
    assert held.alive == [0] * len(nodes)  # each update released before the next is pulled
    total = sum(nodes)
    expected = sum(update(n)["w"] * n for n in nodes) / total
    assert np.allclose(aggregate["w"].numpy(), expected, atol=1e-5)
    assert sorted(report.sites) == sorted(f"s{n}" for n in nodes)


def test_fedadam_from_the_fold_equals_flowers_fedadam_on_all_replies():
    nodes = [1, 2, 3]
    ours = aggregation(fed(), "fedadam")
    grid = InProcessGrid({n: site(n) for n in nodes}, lazy=True)
    aggregate, _ = train_round(grid, ours, record(GLOBAL), 1, fed(), 0)
    flower = FedAdam(eta=ours._inner.eta, eta_l=ours._inner.eta_l, beta_1=ours._inner.beta_1,
                     beta_2=ours._inner.beta_2, tau=ours._inner.tau)
    flower.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}
    expected, _ = flower.aggregate_train(1, replies_for(nodes, wire.NUM_EXAMPLES))
    for key in SHAPES:
        assert np.allclose(aggregate[key].numpy(), expected[key].numpy(), atol=1e-6), key
        assert np.allclose(ours._inner.v_t[key], flower.v_t[key], atol=1e-7), key


def central(mode: str, clip: float, quantile: float = 0.5) -> PrivacyConfig:
    return PrivacyConfig(central=mode, central_clip=clip, central_noise_multiplier=0.0,
                         central_target_quantile=quantile)


def change_norm(node: int) -> float:
    return math.sqrt(sum(float(np.sum((update(node)[k].astype(np.float64) - GLOBAL[k]) ** 2)) for k in SHAPES))


def test_fixed_clipping_mean_equals_the_hand_computed_one_and_flowers():
    nodes, clip = [1, 2, 4], 3.0
    assert change_norm(1) < clip < change_norm(4)  # one update kept whole, one clipped at least
    grid = InProcessGrid({n: site(n, weight_key=wire.SITE_WEIGHT) for n in nodes}, lazy=True)
    aggregate, _ = train_round(grid, aggregation(fed(), privacy=central("fixed", clip)), record(GLOBAL),
                               1, fed(), 0)
    for key in SHAPES:
        changes = [(update(n)[key] - GLOBAL[key]) * min(1.0, clip / change_norm(n)) for n in nodes]
        assert np.allclose(aggregate[key].numpy(), GLOBAL[key] + sum(changes) / len(nodes), atol=1e-5), key
    flower = DifferentialPrivacyServerSideFixedClipping(
        copy.deepcopy(aggregation(fed(), privacy=central("fixed", clip))._inner), 0.0, clip, 2)
    flower.current_arrays = record(GLOBAL)
    expected, _ = flower.aggregate_train(1, replies_for(nodes, wire.SITE_WEIGHT))
    assert np.allclose(aggregate["w"].numpy(), expected["w"].numpy(), atol=1e-5)


@pytest.mark.parametrize("clip, grows", [(0.1, True), (100.0, False)])
def test_adaptive_clipping_norm_moves_towards_the_target_quantile(clip, grows):
    nodes = [1, 2, 3, 4]
    agg = aggregation(fed(), privacy=central("adaptive", clip, quantile=0.5))
    grid = InProcessGrid({n: site(n, weight_key=wire.SITE_WEIGHT) for n in nodes}, lazy=True)
    train_round(grid, agg, record(GLOBAL), 1, fed(), 0)
    # Every update clipped (clip 0.1): none unclipped, the norm grows by exp(lr * 0.5); none clipped shrinks it.
    factor = math.exp(agg.strategy.clip_norm_lr * 0.5)
    assert agg.central_clipping_norm == pytest.approx(clip * factor if grows else clip / factor)
