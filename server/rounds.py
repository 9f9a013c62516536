"""The federated round loop: Flower's strategy decides whom to ask and how to aggregate; this
loop adds what a hospital federation needs around it and Flower's ``Strategy.start`` does not
give — a deadline on every wait, a quorum, retries, screening of replies, and a hook after each
round (evaluation, checkpoint) so a run can stop and resume at any round boundary.

Screening rejects, before aggregation, a reply that carries an error (a site that refuses the
round, e.g. another model schema or app version, or a damaged privacy ledger), belongs to another
round (stale), comes from a site that stopped at its privacy budget, has different weight names
than the global model, cannot be decoded as plain arrays (nothing is ever unpickled), or
contains NaN/inf. If fewer than
``min_sites`` replies survive by the deadline, the round is retried; after ``round_retries``
retries the run stops with :class:`QuorumError` and the global weights stay those of the last
complete round.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared_model.config import FederationConfig, SecAggConfig
from shared_model.model.update_codec import decode_bf16_delta
from server.secure_aggregation import SecAggAbort, quantisation_step, secure_mean

log = logging.getLogger(__name__)

SITE_KEY = "site"  # ConfigRecord of a reply naming the site
PRIVACY_KEY = "privacy"  # ConfigRecord of a train reply: the site's DP settings and ε so far


class QuorumError(RuntimeError):
    """Not enough sites replied (or connected) in time; the run stops without changing weights."""


@dataclass
class RoundReport:
    """What happened in one round; ``sites`` maps site name -> its reply metrics."""

    round: int
    sites: dict[str, dict] = field(default_factory=dict)
    train_metrics: dict = field(default_factory=dict)  # the strategy's aggregate of the reply metrics
    evaluate_metrics: dict = field(default_factory=dict)  # federated evaluation, weighted by test examples
    site_evaluations: dict[str, dict] = field(default_factory=dict)
    site_privacy: dict[str, dict] = field(default_factory=dict)  # site -> DP settings and ε it reported
    rejected: list[str] = field(default_factory=list)
    secagg: dict = field(default_factory=dict)  # survivors, drops per stage, quantisation step (SecAgg+ rounds)
    attempts: int = 1
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


def arrays_nbytes(arrays: ArrayRecord) -> int:
    """Bytes the arrays occupy on the wire (serialised, headers included)."""
    return sum(len(array.data) for array in arrays.values())


def _reply_nbytes(message: Message) -> int:
    """Bytes of a train reply's update: its arrays, or its masked vector under SecAgg+."""
    if "arrays" in message.content.array_records:
        return arrays_nbytes(message.content["arrays"])
    masked = message.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.MASKED_PARAMETERS, [])
    return sum(len(b) for b in masked)


def cast_like(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` in the dtypes of ``reference``: server optimizers (FedAdam, FedYogi) compute in
    float64, but the global model — what is checkpointed and sent — stays in its own dtype, so a
    resumed run continues from exactly what an uninterrupted one holds."""
    return ArrayRecord({k: Array(v.numpy().astype(reference[k].dtype, copy=False)) for k, v in arrays.items()})


def wait_for_sites(grid: Grid, needed: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Connected node ids once at least ``needed`` are there; QuorumError after ``timeout`` s
    (Flower's own sampling would wait forever)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= needed:
            return nodes
        if time.monotonic() >= deadline:
            raise QuorumError(f"only {len(nodes)} of the {needed} sites needed were connected after "
                              f"{timeout:.0f} s (federation.connect_timeout)")
        time.sleep(poll)


def site_name(message: Message) -> str:
    """The site a reply comes from (its own name when it sent one, else its node id)."""
    record = message.content.config_records.get(SITE_KEY) if message.has_content() else None
    return str(record["name"]) if record and "name" in record else f"node-{message.metadata.src_node_id}"


def screen_replies(replies: list[Message], server_round: int, expected_keys: set[str] | None) -> tuple[list[Message], list[str]]:
    """Split replies into usable ones (sorted by site name, so aggregation order is fixed) and
    reasons for the rejected ones. ``expected_keys``: weight names a train reply must carry."""
    accepted, rejected = [], []
    for msg in replies:
        name = site_name(msg)
        if msg.has_error():
            rejected.append(f"{name}: error reply ({msg.error.reason})")
            continue
        metrics = next(iter(msg.content.metric_records.values()), None)
        if metrics is None or int(metrics.get("server-round", -1)) != server_round:
            got = None if metrics is None else metrics.get("server-round")
            rejected.append(f"{name}: reply for round {got}, this is round {server_round} (stale, discarded)")
            continue
        if int(metrics.get("privacy-budget-exhausted", 0)):
            rejected.append(f"{name}: stopped training, its next round would pass its privacy budget "
                            f"(ε spent {float(metrics.get('epsilon', float('nan'))):.3g})")
            continue
        if expected_keys is not None:
            arrays = msg.content.array_records.get("arrays")
            if arrays is None or set(arrays.keys()) != expected_keys:
                rejected.append(f"{name}: weight names differ from the global model")
                continue
            try:  # Flower decodes arrays with allow_pickle=False: a pickled payload fails here, unexecuted
                bad = next((key for key, array in arrays.items() if not np.isfinite(array.numpy()).all()), None)
            except (ValueError, TypeError) as exc:
                rejected.append(f"{name}: update cannot be decoded as plain arrays ({exc}); rejected")
                continue
            if bad is not None:
                rejected.append(f"{name}: non-finite values in {bad!r} (update rejected)")
                continue
        accepted.append(msg)
    accepted.sort(key=site_name)
    for reason in rejected:
        log.warning("round %d: %s", server_round, reason)
    return accepted, rejected


def decode_updates(replies: list[Message], global_arrays: ArrayRecord) -> tuple[list[Message], list[str]]:
    """Turn bf16-delta updates back into weights over ``global_arrays`` (in place); returns the
    replies to screen and the reasons for those whose update does not decode."""
    kept, reasons = [], []
    reference = {key: array.numpy() for key, array in global_arrays.items()}
    for msg in replies:
        if msg.has_error() or "arrays" not in msg.content.array_records:
            kept.append(msg)
            continue
        arrays = msg.content["arrays"]
        try:
            if set(arrays.keys()) != set(reference):
                raise ValueError("weight names differ from the global model")
            decoded = {key: decode_bf16_delta(key, array.numpy(), reference[key]) for key, array in arrays.items()}
        except (ValueError, TypeError) as exc:
            reasons.append(f"{site_name(msg)}: update is not a bf16 delta of the global model ({exc}); rejected")
            continue
        msg.content["arrays"] = ArrayRecord({key: Array(value) for key, value in decoded.items()})
        kept.append(msg)
    return kept, reasons


def _seed_sampling(seed: int, server_round: int, attempt: int) -> None:
    # Flower's node sampling draws from the global `random`; seeding it per round makes the
    # choice of sites the same in a resumed run.
    random.seed(zlib.crc32(f"{seed}/{server_round}/{attempt}".encode()))


def _secure_replies(grid: Grid, messages: list[Message], secagg: SecAggConfig, fed: FederationConfig,
                    report: RoundReport) -> tuple[list[Message], list[np.ndarray] | None]:
    """Run the round's training under SecAgg+: the replies (metrics, no weights) and the mean
    delta of the survivors, or no mean when the round aborted."""
    contents = {m.metadata.dst_node_id: m.content for m in messages}
    try:
        result = secure_mean(grid, list(contents), lambda nid: RecordDict(
            {"arrays": contents[nid]["arrays"], "config": contents[nid]["config"]}), secagg, fed.round_timeout)
    except SecAggAbort as exc:
        report.rejected.append(str(exc))
        return [], None
    report.secagg = {"survivors": len(result.survivors), "dropped": {k: len(v) for k, v in result.dropped.items()},
                     "quantisation-step": quantisation_step(secagg), "clipping-range": secagg.clipping_range}
    return result.replies, result.mean


def train_round(grid: Grid, strategy: Strategy, arrays: ArrayRecord, server_round: int, fed: FederationConfig,
                seed: int, secagg: SecAggConfig | None = None,
                train_config: ConfigRecord | None = None) -> tuple[ArrayRecord, RoundReport]:
    """One training round with retries; returns the aggregate and the round's report. With
    ``secagg`` enabled the aggregate is the global weights plus the securely summed mean delta;
    ``train_config`` goes to every site with the weights."""
    report = RoundReport(server_round)
    secure = secagg is not None and secagg.enabled
    expected = None if secure else set(arrays.keys())
    mean_delta = None
    for attempt in range(fed.round_retries + 1):
        report.attempts = attempt + 1
        wait_for_sites(grid, max(fed.min_available, fed.min_sites), fed.connect_timeout)
        _seed_sampling(seed, server_round, attempt)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config or {})), grid))
        report.bytes_sent += arrays_nbytes(arrays) * len(messages)
        if secure:
            replies, mean_delta = _secure_replies(grid, messages, secagg, fed, report)
        else:
            replies = list(grid.send_and_receive(messages, timeout=fed.round_timeout))
        report.site_privacy.update({site_name(m): dict(m.content.config_records[PRIVACY_KEY]) for m in replies
                                    if m.has_content() and PRIVACY_KEY in m.content.config_records})
        wire = {id(m): _reply_nbytes(m) for m in replies if m.has_content()}  # as sent, before any decoding
        screened = replies
        if fed.update_encoding == "bf16-delta" and not secure:
            screened, undecodable = decode_updates(replies, arrays)
            report.rejected.extend(undecodable)
        accepted, rejected = screen_replies(screened, server_round, expected)
        report.rejected.extend(rejected)
        report.bytes_received += sum(wire[id(m)] for m in accepted)
        missing = len(messages) - len(replies)
        if secure and mean_delta is None:
            accepted = []
        elif missing:
            report.rejected.append(f"{missing} of {len(messages)} sites did not reply within "
                                   f"{fed.round_timeout:.0f} s (federation.round_timeout)")
        if len(accepted) >= fed.min_sites:
            break
        log.warning("round %d attempt %d: quorum not met (%d usable replies, %d needed)",
                    server_round, attempt + 1, len(accepted), fed.min_sites)
    else:
        raise QuorumError(f"round {server_round}: quorum not met — {len(accepted)} usable replies, "
                          f"federation.min_sites={fed.min_sites}, after {fed.round_retries + 1} attempts; "
                          f"global weights unchanged since round {server_round - 1}. Rejected: "
                          + "; ".join(report.rejected))
    if secure:
        aggregate = ArrayRecord({key: Array(np.asarray(array.numpy().astype(np.float64) + delta, dtype=array.dtype))
                                 for (key, array), delta in zip(arrays.items(), mean_delta, strict=True)})
        metrics = strategy.train_metrics_aggr_fn([m.content for m in accepted], strategy.weighted_by_key)
    else:
        aggregate, metrics = strategy.aggregate_train(server_round, accepted)
    if aggregate is None:
        raise QuorumError(f"round {server_round}: the strategy produced no aggregate")
    aggregate = cast_like(aggregate, arrays)
    report.sites = {site_name(m): dict(next(iter(m.content.metric_records.values()))) for m in accepted}
    report.train_metrics = dict(metrics or {})
    return aggregate, report


def evaluate_round(grid: Grid, strategy: Strategy, arrays: ArrayRecord, report: RoundReport, fed: FederationConfig,
                   seed: int, config: ConfigRecord | None = None) -> None:
    """Federated evaluation of the aggregate on the sites' test splits (sites without test rows
    are left out of the weighted mean); fills ``report`` in place."""
    _seed_sampling(seed, report.round, -1)
    messages = list(strategy.configure_evaluate(report.round, arrays, ConfigRecord(dict(config or {})), grid))
    if not messages:
        return
    report.bytes_sent += arrays_nbytes(arrays) * len(messages)
    replies = list(grid.send_and_receive(messages, timeout=fed.round_timeout))
    accepted, rejected = screen_replies(replies, report.round, None)
    report.rejected.extend(rejected)
    scored = [m for m in accepted if next(iter(m.content.metric_records.values()))["num-examples"] > 0]
    report.site_evaluations = {site_name(m): dict(next(iter(m.content.metric_records.values()))) for m in scored}
    if scored:
        report.evaluate_metrics = dict(strategy.aggregate_evaluate(report.round, scored) or {})


def run_rounds(grid: Grid, strategy: Strategy, arrays: ArrayRecord, first_round: int, fed: FederationConfig, seed: int,
               after_round: Callable[[ArrayRecord, RoundReport], None], federated_eval: bool = True,
               secagg: SecAggConfig | None = None, train_config: ConfigRecord | None = None) -> ArrayRecord:
    """Rounds ``first_round`` .. ``fed.rounds``; ``after_round`` (evaluation, checkpoint) runs
    after each complete round, before the next one starts."""
    for server_round in range(first_round, fed.rounds + 1):
        start = time.perf_counter()
        log.info("round %d/%d", server_round, fed.rounds)
        arrays, report = train_round(grid, strategy, arrays, server_round, fed, seed, secagg, train_config)
        if federated_eval:
            evaluate_round(grid, strategy, arrays, report, fed, seed, train_config)
        report.seconds = time.perf_counter() - start
        after_round(arrays, report)
    return arrays
