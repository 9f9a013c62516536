"""The round loop's guarantees, against an in-process Grid with scripted sites: quorum, retries,
deadline (a silent site), stale and non-finite replies, and the aggregate itself."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from server.rounds import QuorumError, run_rounds, train_round
from shared_model.config import FederationConfig
from tests.fixtures.in_process_grid import InProcessGrid, aggregation

GLOBAL = {"w": torch.zeros(4), "b": torch.ones(2)}


def fed(**kw) -> FederationConfig:
    base = dict(rounds=1, min_sites=2, min_available=2, connect_timeout=0.5, round_timeout=1.0, round_retries=1)
    return FederationConfig(**{**base, **kw})


def site(name: str, value: float, n: int = 10, round_shift: int = 0, silent: bool = False):
    """A site that returns every weight filled with ``value`` for ``n`` examples."""
    calls = []

    def handle(msg: Message) -> Message | None:
        calls.append(msg)
        if silent:
            return None
        rnd = int(msg.content["config"]["server-round"]) + round_shift
        if msg.metadata.message_type != "train":
            metrics = MetricRecord({"num-examples": n, "server-round": rnd, "zero-shot-aca": value})
            return Message(RecordDict({"metrics": metrics, "site": ConfigRecord({"name": name})}), reply_to=msg)
        arrays = ArrayRecord({k: torch.full_like(v, value) for k, v in GLOBAL.items()})
        metrics = MetricRecord({"num-examples": n, "server-round": rnd, "loss.total": value})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics, "site": ConfigRecord({"name": name})}),
                       reply_to=msg)

    handle.calls = calls
    return handle


def test_fedavg_weights_by_examples_and_reports_sites():
    grid = InProcessGrid({1: site("a", 1.0, n=10), 2: site("b", 4.0, n=30)})
    aggregate, report = train_round(grid, aggregation(fed()), ArrayRecord(GLOBAL), 1, fed(), 0)
    assert np.allclose(aggregate["w"].numpy(), (1.0 * 10 + 4.0 * 30) / 40)
    assert sorted(report.sites) == ["a", "b"] and report.rejected == []
    assert report.bytes_received == report.bytes_sent > 0  # same model size both ways


def test_silent_site_does_not_hang_the_round_when_quorum_holds():
    grid = InProcessGrid({1: site("a", 1.0), 2: site("b", 3.0), 3: site("c", 9.0, silent=True)})
    aggregate, report = train_round(grid, aggregation(fed()), ArrayRecord(GLOBAL), 1, fed(), 0)
    assert np.allclose(aggregate["w"].numpy(), 2.0)
    assert any("did not reply" in r for r in report.rejected)


def test_below_quorum_retries_then_stops_with_weights_untouched():
    silent = site("b", 3.0, silent=True)
    grid = InProcessGrid({1: site("a", 1.0), 2: silent})
    arrays = ArrayRecord(GLOBAL)
    kept = {k: v.numpy().copy() for k, v in arrays.items()}
    seen = []
    with pytest.raises(QuorumError, match="quorum not met"):
        run_rounds(grid, aggregation(fed()), arrays, 1, fed(round_retries=2), 0,
                   lambda a, r: seen.append(r), seen.append)
    assert seen == [] and len(silent.calls) == 3  # three attempts, no round completed
    assert all(np.array_equal(arrays[k].numpy(), kept[k]) for k in kept)


def test_too_few_connected_sites_stop_after_the_connect_timeout():
    grid = InProcessGrid({1: site("a", 1.0)})
    with pytest.raises(QuorumError, match="connect_timeout"):
        train_round(grid, aggregation(fed()), ArrayRecord(GLOBAL), 1, fed(), 0)


def test_stale_and_non_finite_replies_are_discarded_and_the_rest_aggregated():
    def nan_site(msg):
        reply = site("nan", 0.0)(msg)
        reply.content["arrays"] = ArrayRecord({"w": torch.full((4,), float("nan")), "b": torch.ones(2)})
        return reply

    grid = InProcessGrid({1: site("a", 1.0), 2: site("b", 3.0), 3: site("old", 50.0, round_shift=-1), 4: nan_site})
    aggregate, report = train_round(grid, aggregation(fed()), ArrayRecord(GLOBAL), 2, fed(), 0)
    assert np.allclose(aggregate["w"].numpy(), 2.0)
    assert any("stale" in r and r.startswith("old") for r in report.rejected)
    assert any("non-finite" in r and r.startswith("nan") for r in report.rejected)


def test_median_resists_one_outlying_site():
    grid = InProcessGrid({1: site("a", 1.0), 2: site("b", 1.2), 3: site("evil", 1e6)})
    aggregate, _ = train_round(grid, aggregation(fed(), "fedmedian"), ArrayRecord(GLOBAL), 1, fed(), 0)
    assert np.allclose(aggregate["w"].numpy(), 1.2)


def test_a_reply_is_attributed_to_the_name_its_key_is_registered_under():
    # Node 3 holds the key registered as "c" but claims to be "a": rejected, and the real "a" counts once.
    grid = InProcessGrid({1: site("a", 1.0), 2: site("b", 3.0), 3: site("a", 100.0)}, names={1: "a", 2: "b", 3: "c"})
    aggregate, report = train_round(grid, aggregation(fed()), ArrayRecord(GLOBAL), 1, fed(), 0)
    assert np.allclose(aggregate["w"].numpy(), 2.0) and sorted(report.sites) == ["a", "b"]
    assert report.rejected == ["node 3: claims to be site 'a' but its key is registered as 'c' (rejected)"]


def test_a_second_unregistered_site_under_a_taken_name_is_rejected():
    # Replies are folded as they arrive: the first node under a name counts, a later one is refused.
    grid = InProcessGrid({1: site("a", 1.0), 2: site("b", 3.0), 3: site("b", 100.0)})
    aggregate, report = train_round(grid, aggregation(fed(min_sites=1)), ArrayRecord(GLOBAL),
                                    1, fed(min_sites=1), 0)
    assert np.allclose(aggregate["w"].numpy(), 2.0) and sorted(report.sites) == ["a", "b"]
    assert report.rejected == ["node 3: replies as 'b', as node 2 did first (rejected: every site needs its own name)"]


def test_a_silent_site_is_named_by_its_registered_name():
    grid = InProcessGrid({1: site("a", 1.0), 2: site("b", 3.0), 3: site("c", 9.0, silent=True)},
                         names={1: "a", 2: "b", 3: "hospital-c"})
    _, report = train_round(grid, aggregation(fed()), ArrayRecord(GLOBAL), 1, fed(), 0)
    assert report.rejected == ["1 of 3 sites did not reply within 1 s (federation.round_timeout): hospital-c"]


def test_evaluation_without_its_quorum_is_skipped_within_the_deadline_after_the_round_is_kept():
    """Three sites, min_available=3; one drops out after training. Flower's sampler would wait for
    a third site forever: evaluation is skipped after connect_timeout, and the round's aggregate
    was handed over (checkpointed) before evaluation started."""
    grid = InProcessGrid({})
    leaving = site("c", 4.0)

    def drop_after_training(msg: Message) -> Message | None:
        reply = leaving(msg)
        del grid.handlers[3]  # the site disconnects as soon as it has replied
        return reply

    grid.handlers.update({1: site("a", 1.0), 2: site("b", 1.0), 3: drop_after_training})
    events = []
    config = fed(min_available=3, connect_timeout=0.5)
    start = time.monotonic()
    run_rounds(grid, aggregation(config), ArrayRecord(GLOBAL), 1, config, 0,
               lambda arrays, report: events.append(("trained", report.evaluation_skipped)),
               lambda report: events.append(("evaluated", report.evaluation_skipped)))
    assert time.monotonic() - start < 5
    assert events[0] == ("trained", None)
    assert (events[1][0] == "evaluated"
            and events[1][1].startswith("federated evaluation skipped: only 2 sites connected"))
