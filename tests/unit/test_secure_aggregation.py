"""SecAgg+ over the Message API with Flower's client-side mod: the coordinator never holds an
individual update, the unmasked mean equals plain FedAvg within the quantisation error, dropouts
after key sharing are recovered, and too many dropouts give no aggregate at all."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import message_from_proto, message_to_proto

from client.secure_aggregation import secagg_delta, secagg_mod
from server.compatibility import FederationConfigError, check_federation
from server.rounds import train_round
from server.secure_aggregation import SecAggAbort, quantisation_step, secure_mean
from shared_model.config import FederationAppConfig, FederationConfig, PrivacyConfig, SecAggConfig, StrategyConfig
from tests.fixtures.in_process_grid import InProcessGrid, aggregation

SHAPES = {"w": (3, 4), "b": (5,), "scale": ()}
CFG = SecAggConfig(enabled=True, threshold=3)


def _site_app(local: dict[int, dict[str, np.ndarray]]) -> ClientApp:
    """A site that 'trains' to known local weights and replies as our ClientApp does under SecAgg."""
    app = ClientApp(mods=[secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = ArrayRecord({k: Array(v) for k, v in local[context.node_id].items()})
        delta, clipped = secagg_delta(arrays, msg.content["arrays"], CFG.clipping_range)
        metrics = MetricRecord({"num-examples": 1, "server-round": int(msg.content["config"]["server-round"]),
                                "secagg-clipped-fraction": clipped})
        return Message(RecordDict({"arrays": delta, "metrics": metrics,
                                   "site": ConfigRecord({"name": f"site-{context.node_id}"})}), reply_to=msg)

    return app


def _handler(app: ClientApp, node_id: int, drop_at: str | None, received: list[Message]):
    context = Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})

    def handle(msg: Message) -> Message | None:
        stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
        if stage == drop_at:
            return None  # the site went offline: no reply by the deadline
        msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        try:
            reply = app(message_from_proto(message_to_proto(msg)), context)
        except Exception as exc:  # what a SuperNode turns into an error reply
            reply = Message(Error(code=0, reason=repr(exc)), reply_to=msg)
        reply = message_from_proto(message_to_proto(reply))  # as it crosses the wire
        received.append(reply)
        return reply

    return handle


def _federation(n: int, drops: dict[int, str], seed: int = 0):
    rng = np.random.default_rng(seed)
    global_arrays = {k: np.asarray(rng.normal(size=s), dtype=np.float32) for k, s in SHAPES.items()}
    local = {nid: {k: np.asarray(v + rng.uniform(-0.2, 0.2, size=v.shape), dtype=np.float32)
                   for k, v in global_arrays.items()} for nid in range(1, n + 1)}
    received: list[Message] = []
    app = _site_app(local)
    grid = InProcessGrid({nid: _handler(app, nid, drops.get(nid), received) for nid in local})
    return grid, global_arrays, local, received


def _content(global_arrays: dict[str, np.ndarray]):
    return lambda nid: RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in global_arrays.items()}),
                                   "config": ConfigRecord({"server-round": 1})})


def _assert_nothing_individual(received: list[Message]) -> None:
    assert received and all(len(m.content.array_records) == 0 for m in received if m.has_content())


def test_five_sites_mean_equals_plain_mean_and_no_update_is_seen():
    grid, global_arrays, local, received = _federation(5, {})
    result = secure_mean(grid, list(local), _content(global_arrays), CFG, timeout=30)
    _assert_nothing_individual(received)
    for i, key in enumerate(SHAPES):
        plain = np.mean([local[nid][key].astype(np.float64) - global_arrays[key] for nid in local], axis=0)
        assert result.mean[i].shape == SHAPES[key]
        assert np.abs(result.mean[i] - plain).max() <= quantisation_step(CFG)
    masked = [np.frombuffer(b, dtype=np.uint8) for m in received if m.has_content()
              for b in m.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.MASKED_PARAMETERS, [])]
    assert masked  # the only vectors that left the sites are the masked ones


def test_two_sites_dropping_after_key_sharing_still_give_the_mean_of_the_other_three():
    grid, global_arrays, local, received = _federation(5, {2: "collect_masked_vectors", 4: "collect_masked_vectors"})
    result = secure_mean(grid, list(local), _content(global_arrays), CFG, timeout=30)
    assert result.survivors == [1, 3, 5] and result.dropped["collect_masked_vectors"] == [2, 4]
    for i, key in enumerate(SHAPES):
        plain = np.mean([local[nid][key].astype(np.float64) - global_arrays[key] for nid in (1, 3, 5)], axis=0)
        assert np.abs(result.mean[i] - plain).max() <= quantisation_step(CFG)
    _assert_nothing_individual(received)


def test_three_sites_dropping_give_no_aggregate_by_the_deadline():
    grid, global_arrays, local, received = _federation(5, {k: "collect_masked_vectors" for k in (1, 2, 3)})
    start = time.monotonic()
    with pytest.raises(SecAggAbort, match="threshold 3"):
        secure_mean(grid, list(local), _content(global_arrays), CFG, timeout=30)
    assert time.monotonic() - start < 30
    assert not any(m.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE) == "unmask"
                   for m in grid.sent if m.has_content())  # no unmask request: nothing was unmasked
    _assert_nothing_individual(received)


def test_round_loop_under_secagg_equals_fedavg_within_quantisation():
    grid, global_arrays, local, _ = _federation(4, {})
    fed = FederationConfig(rounds=1, min_sites=3, min_available=3, round_timeout=30, connect_timeout=5)
    arrays = ArrayRecord({k: Array(v) for k, v in global_arrays.items()})
    aggregate, report = train_round(grid, aggregation(fed, secagg=CFG), arrays, 1, fed, 0)
    for key in SHAPES:
        fedavg = np.mean([local[nid][key].astype(np.float64) for nid in local], axis=0)
        assert np.abs(aggregate[key].numpy() - fedavg).max() <= quantisation_step(CFG) + 1e-6
        assert aggregate[key].numpy().dtype == np.float32
    assert report.secagg["survivors"] == 4 and sorted(report.sites) == [f"site-{k}" for k in range(1, 5)]


def test_deltas_are_clipped_to_the_masking_range_and_the_share_reported():
    arrays = ArrayRecord({"w": Array(np.array([0.0, 0.1, 2.0], dtype=np.float32))})
    reference = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    delta, clipped = secagg_delta(arrays, reference, 0.5)
    assert np.allclose(delta["w"].numpy(), [0.0, 0.1, 0.5]) and clipped == pytest.approx(1 / 3)


@pytest.mark.parametrize("overrides,fragment", [
    ({"strategy": StrategyConfig(name="krum")}, "robust aggregator"),
    ({"strategy": StrategyConfig(name="fedmedian")}, "robust aggregator"),
    ({"strategy": StrategyConfig(name="fedadam")}, "individual replies"),
    ({"privacy": PrivacyConfig(central="fixed")}, "server-side clipping"),
])
def test_secagg_with_server_side_clipping_or_robust_aggregation_is_a_config_error(overrides, fragment):
    with pytest.raises(FederationConfigError, match=fragment):
        check_federation(FederationAppConfig(secagg=SecAggConfig(enabled=True), **overrides))


MASKED_POISON = {  # how a site rewrites its masked vector [weight, w, b, scale], what the reason names
    "an extra array": (lambda v: v + [v[2]], "holds 4 weight arrays"),
    "a missing array": (lambda v: v[:-1], "holds 2 weight arrays"),
    "a float array": (lambda v: [v[0], v[1].astype(np.float64), *v[2:]], "masked 'w' is float64[3, 4]"),
    "a (1,) array for a matrix": (lambda v: [v[0], v[1].reshape(-1)[:1], *v[2:]], "masked 'w' is int64[1]"),
    "a 0-d array for a matrix": (lambda v: [v[0], v[1].reshape(-1)[0], *v[2:]], "masked 'w' is int64[]"),
    "values beyond the modulus": (lambda v: [v[0], v[1] + CFG.modulus_range, *v[2:]], "outside [0,"),
}


@pytest.mark.parametrize("case", list(MASKED_POISON))
def test_a_masked_vector_that_does_not_fit_the_model_is_cancelled_before_the_sum(case):
    """The poisoned site is unmasked as one that dropped after sharing keys: the mean is that of
    the other three, its own update is never revealed, and the reason names it."""
    poison, named = MASKED_POISON[case]
    grid, global_arrays, local, _ = _federation(4, {})
    honest = grid.handlers[3]

    def poisoned(msg: Message) -> Message | None:
        reply = honest(msg)
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS in record:
            vector = [bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS]]
            record[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(np.asarray(a)) for a in poison(vector)]
        return reply

    grid.handlers[3] = poisoned
    fed = FederationConfig(rounds=1, min_sites=3, min_available=4, round_timeout=30, connect_timeout=5)
    arrays = ArrayRecord({k: Array(v) for k, v in global_arrays.items()})
    aggregate, report = train_round(grid, aggregation(fed, secagg=CFG), arrays, 1, fed, 0)
    for key in SHAPES:
        fedavg = np.mean([local[nid][key].astype(np.float64) for nid in (1, 2, 4)], axis=0)
        assert np.abs(aggregate[key].numpy() - fedavg).max() <= quantisation_step(CFG) + 1e-6
    assert report.secagg["survivors"] == 3 and sorted(report.sites) == ["site-1", "site-2", "site-4"]
    assert len(report.rejected) == 1 and report.rejected[0].startswith("site-3: ") and named in report.rejected[0]
