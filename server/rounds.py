"""The federated round loop: Flower's strategy decides whom to ask, :mod:`server.aggregation`
makes the aggregate; this loop adds what a hospital federation needs around them and Flower's
``Strategy.start`` does not give — a deadline on every wait, a quorum, retries, screening of
replies, and a hook after each round (evaluation, checkpoint) so a run can stop and resume at
any round boundary.

Every wait is bounded: for sites to connect (``federation.connect_timeout``, also inside Flower's
node sampling, which has no deadline of its own), for replies (``federation.round_timeout``, per
exchange under SecAgg+). Federated evaluation that cannot reach its quorum is skipped with the
reason, never waited for. A reply is attributed to the name its site's key is registered under
at the SuperLink (``retina-server pki add-site``); a reply that claims another site's name, or
two replies under one name, are rejected.

Screening rejects, before aggregation, a reply that carries an error (a site that refuses the
round, e.g. another model schema or app version, or a damaged privacy ledger), belongs to another
round (stale), comes from a site that stopped at its privacy budget, or whose update does not
fit the global model: other weight names, another shape or dtype, not plain arrays (nothing is
ever unpickled), NaN/inf (:mod:`server.update_screen`; under SecAgg+ the masked vector's layout,
before it is summed). If fewer than ``min_sites`` replies survive by the deadline, the round is
retried; after ``round_retries`` retries the run stops with :class:`QuorumError` and the global
weights stay those of the last complete round.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.aggregation import Aggregation
from server.reply_stream import stream_replies
from server.round_fold import RoundFold, SecureFold, release_update
from server.secure_aggregation import SecAggAbort, quantisation_step, secure_mean
from server.update_screen import masked_mismatch, update_mismatch
from shared_model import wire
from shared_model.config import FederationConfig, SecAggConfig

log = logging.getLogger(__name__)



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
    evaluation_skipped: str | None = None  # why federated evaluation did not run this round
    attempts: int = 1
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


def arrays_nbytes(arrays: ArrayRecord) -> int:
    """Bytes the arrays occupy on the wire (serialised, headers included)."""
    return sum(len(array.data) for array in arrays.values())


def _reply_nbytes(message: Message) -> int:
    """Bytes of a train reply's update: its arrays, or its masked vector under SecAgg+."""
    if wire.ARRAYS in message.content.array_records:
        return arrays_nbytes(message.content[wire.ARRAYS])
    masked = message.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.MASKED_PARAMETERS, [])
    return sum(len(b) for b in masked)


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


class _SitesDeadline:
    """The Grid as a strategy sees it while it samples sites: asking for the connected sites
    after ``timeout`` s raises QuorumError, so Flower's sampler (which loops until
    ``min_available_nodes`` are connected) cannot wait past the deadline when a site drops out."""

    def __init__(self, grid: Grid, timeout: float):
        self._grid, self._timeout = grid, timeout
        self._deadline = time.monotonic() + timeout

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        nodes = list(self._grid.get_node_ids())
        if time.monotonic() > self._deadline:
            sites = f"{len(nodes)} site{'' if len(nodes) == 1 else 's'}"
            raise QuorumError(f"only {sites} connected after {self._timeout:.0f} s (federation.connect_timeout), "
                              "fewer than federation.min_available")
        return nodes


def registered_names(grid: Grid) -> dict[int, str]:
    """Node id -> the name its key was registered under (``pki add-site``); empty for sites that
    joined without registration (simulation, ``--insecure``)."""
    return {node.node_id: node.name for node in grid.get_nodes() if node.name}


def _claimed_name(message: Message) -> str | None:
    record = message.content.config_records.get(wire.SITE) if message.has_content() else None
    return str(record[wire.SITE_NAME]) if record and wire.SITE_NAME in record else None


def site_name(message: Message, registered: dict[int, str] | None = None) -> str:
    """The site a reply comes from: the name its key is registered under, else the name it
    sent, else its node id."""
    node = message.metadata.src_node_id
    return (registered or {}).get(node) or _claimed_name(message) or f"node-{node}"


class ReplyScreen:
    """Screens a round's replies one at a time (module doc), remembering the names already
    heard: a reply under a name another node replied under before is rejected — every site needs
    its own name. ``check``: why a reply's update cannot be added to the global model
    (:mod:`server.update_screen`), None for replies without weights; ``registered``: node id ->
    registered site name (:func:`registered_names`)."""

    def __init__(self, server_round: int, check: Callable[[Message], str | None] | None,
                 registered: dict[int, str] | None = None):
        self.server_round, self.check, self.registered = server_round, check, registered or {}
        self._heard: dict[str, int] = {}  # site name -> the node that first replied under it

    def __call__(self, msg: Message) -> str | None:
        """Why ``msg`` is rejected (logged), or None when it may be aggregated."""
        reason = self._reason(msg)
        if reason:
            log.warning("round %d: %s", self.server_round, reason)
        return reason

    def _reason(self, msg: Message) -> str | None:
        node = msg.metadata.src_node_id
        claimed, known = _claimed_name(msg), self.registered.get(node)
        if known and claimed and claimed != known:
            return f"node {node}: claims to be site {claimed!r} but its key is registered as {known!r} (rejected)"
        name = site_name(msg, self.registered)
        first = self._heard.setdefault(name, node)
        if first != node:
            return (f"node {node}: replies as {name!r}, as node {first} did first (rejected: every site needs "
                    "its own name)")
        if msg.has_error():
            return f"{name}: error reply ({msg.error.reason})"
        metrics = next(iter(msg.content.metric_records.values()), None)
        if metrics is None or int(metrics.get(wire.SERVER_ROUND, -1)) != self.server_round:
            got = None if metrics is None else metrics.get(wire.SERVER_ROUND)
            return f"{name}: reply for round {got}, this is round {self.server_round} (stale, discarded)"
        if int(metrics.get(wire.BUDGET_EXHAUSTED, 0)):
            return (f"{name}: stopped training, its next round would pass its privacy budget "
                    f"(ε spent {float(metrics.get(wire.EPSILON, float('nan'))):.3g})")
        reason = self.check(msg) if self.check is not None else None
        return f"{name}: {reason} (update rejected)" if reason else None


def screen_replies(replies: list[Message], server_round: int, check: Callable[[Message], str | None] | None,
                   registered: dict[int, str] | None = None) -> tuple[list[Message], list[str]]:
    """Split replies received together into usable ones (sorted by site name) and reasons for
    the rejected ones, with a :class:`ReplyScreen`."""
    screen = ReplyScreen(server_round, check, registered)
    accepted, rejected = [], []
    for msg in sorted(replies, key=lambda m: m.metadata.src_node_id):
        reason = screen(msg)
        (rejected if reason else accepted).append(reason or msg)
    accepted.sort(key=lambda m: site_name(m, registered))
    return accepted, rejected


def _seed_sampling(seed: int, server_round: int, attempt: int) -> None:
    # Flower's node sampling draws from the global `random`; seeding it per round makes the
    # choice of sites the same in a resumed run.
    random.seed(zlib.crc32(f"{seed}/{server_round}/{attempt}".encode()))


def _secure_replies(grid: Grid, messages: list[Message], secagg: SecAggConfig, fed: FederationConfig,
                    report: RoundReport, screen: Callable[[list[Message]], list[Message]], fold: SecureFold
                    ) -> list[Message]:
    """Run the round's training under SecAgg+: every masked-vector reply received is returned;
    those ``screen`` kept (metrics, no weights) go into ``fold`` with the mean delta of the kept
    ones, unless the round aborted."""
    contents = {m.metadata.dst_node_id: m.content for m in messages}
    received: list[Message] = []

    def keep(replies: list[Message]) -> list[Message]:
        received.extend(replies)
        return screen(replies)

    try:
        result = secure_mean(grid, list(contents), lambda nid: RecordDict(
            {wire.ARRAYS: contents[nid][wire.ARRAYS], wire.CONFIG: contents[nid][wire.CONFIG]}),
            secagg, fed.round_timeout, keep)
    except SecAggAbort as exc:
        report.rejected.append(str(exc))
        return received
    report.secagg = {"survivors": len(result.survivors), "dropped": {k: len(v) for k, v in result.dropped.items()},
                     "quantisation-step": quantisation_step(secagg), "clipping-range": secagg.clipping_range}
    for msg in result.replies:
        fold.add(msg)
    fold.mean_delta = result.mean
    return received


def _update_check(arrays: ArrayRecord, secagg: SecAggConfig) -> Callable[[Message], str | None]:
    """How a train reply's update is screened against the global ``arrays``: its weights, or
    under SecAgg+ the layout of its masked vector."""
    if secagg.enabled:
        return lambda msg: masked_mismatch(
            list(msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.MASKED_PARAMETERS, [])),
            arrays, secagg.modulus_range)
    return lambda msg: update_mismatch(msg.content.array_records.get(wire.ARRAYS), arrays)


def _sampled(grid: Grid, aggregation: Aggregation, arrays: ArrayRecord, server_round: int, attempt: int,
             fed: FederationConfig, seed: int, train_config: ConfigRecord | None) -> list[Message]:
    """The round's train messages: the strategy samples the connected sites (seeded, within the
    connection deadline) and configures each with the global weights and ``train_config``."""
    wait_for_sites(grid, max(fed.min_available, fed.min_sites), fed.connect_timeout)
    _seed_sampling(seed, server_round, attempt)
    return list(aggregation.strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config or {})),
                                                     _SitesDeadline(grid, fed.connect_timeout)))


def _attempt(grid: Grid, aggregation: Aggregation, arrays: ArrayRecord, server_round: int, attempt: int,
             fed: FederationConfig, seed: int, train_config: ConfigRecord | None, report: RoundReport
             ) -> tuple[dict[int, str], RoundFold]:
    """One try at a round's training: sample and ask the sites, then take their replies one at a
    time (:func:`server.reply_stream.stream_replies`): decode, screen, fold the accepted update
    into the aggregate and release it (rejections, privacy records and bytes go into ``report``).
    Returns the registered names and the fold, whose ``accepted`` replies say whether the quorum
    was met."""
    secure = aggregation.secagg.enabled
    check = _update_check(arrays, aggregation.secagg)
    messages = _sampled(grid, aggregation, arrays, server_round, attempt, fed, seed, train_config)
    registered = registered_names(grid)
    report.bytes_sent += arrays_nbytes(arrays) * len(messages)
    fold = aggregation.begin(server_round, arrays)
    replies: list[Message] = []

    def keep_privacy(msg: Message) -> None:
        replies.append(msg)
        if msg.has_content() and wire.PRIVACY in msg.content.config_records:
            report.site_privacy[site_name(msg, registered)] = dict(msg.content.config_records[wire.PRIVACY])

    if secure:  # screened inside, before the masked vectors are summed
        def screen_list(batch: list[Message]) -> list[Message]:
            accepted, rejected = screen_replies(batch, server_round, check, registered)
            report.rejected.extend(rejected)
            return accepted

        for msg in _secure_replies(grid, messages, aggregation.secagg, fed, report, screen_list, fold):
            keep_privacy(msg)
        report.bytes_received += sum(_reply_nbytes(m) for m in fold.accepted)
        if fold.mean_delta is not None:
            report.rejected.extend(_silent(messages, replies, registered, fed.round_timeout))
        return registered, fold
    screen = ReplyScreen(server_round, check, registered)
    order = lambda m: (registered.get(m.metadata.dst_node_id, ""), m.metadata.dst_node_id)  # noqa: E731
    for msg in stream_replies(grid, messages, fed.round_timeout, order):
        keep_privacy(msg)
        size = _reply_nbytes(msg) if msg.has_content() else 0  # as sent, before any decoding
        decoded, undecodable = aggregation.decode([msg], arrays)
        reason = (f"{site_name(msg, registered)}: {undecodable[id(msg)]}" if undecodable else screen(decoded[0]))
        if reason:
            report.rejected.append(reason)
            release_update(msg)
            continue
        fold.add(decoded[0])
        report.bytes_received += size
    report.rejected.extend(_silent(messages, replies, registered, fed.round_timeout))
    return registered, fold


def train_round(grid: Grid, aggregation: Aggregation, arrays: ArrayRecord, server_round: int, fed: FederationConfig,
                seed: int, train_config: ConfigRecord | None = None) -> tuple[ArrayRecord, RoundReport]:
    """One training round with retries; returns the aggregate (:class:`server.aggregation.Aggregation`)
    and the round's report. ``train_config`` goes to every site with the weights. Every update is
    screened before anything of it is added (:mod:`server.update_screen`)."""
    report = RoundReport(server_round)
    for attempt in range(fed.round_retries + 1):
        report.attempts = attempt + 1
        registered, fold = _attempt(grid, aggregation, arrays, server_round, attempt, fed, seed, train_config, report)
        if len(fold.accepted) >= fed.min_sites:
            break
        log.warning("round %d attempt %d: quorum not met (%d usable replies, %d needed)",
                    server_round, attempt + 1, len(fold.accepted), fed.min_sites)
    else:
        raise QuorumError(f"round {server_round}: quorum not met — {len(fold.accepted)} usable replies, "
                          f"federation.min_sites={fed.min_sites}, after {fed.round_retries + 1} attempts; "
                          f"global weights unchanged since round {server_round - 1}. Rejected: "
                          + "; ".join(report.rejected))
    aggregate, report.train_metrics = aggregation.finish(fold)
    if aggregate is None:
        raise QuorumError(f"round {server_round}: the strategy produced no aggregate")
    report.sites = {site_name(m, registered): dict(_metrics(m)) for m in fold.accepted}
    return aggregate, report


def _metrics(message: Message):
    """A reply's metric record."""
    return next(iter(message.content.metric_records.values()))


def _silent(messages: list[Message], replies: list[Message], registered: dict[int, str], timeout: float) -> list[str]:
    """One reason naming the sites that were asked and did not reply in time, if any."""
    answered = {m.metadata.src_node_id for m in replies}
    silent = [registered.get(m.metadata.dst_node_id, f"node-{m.metadata.dst_node_id}") for m in messages
              if m.metadata.dst_node_id not in answered]
    if not silent:
        return []
    return [f"{len(silent)} of {len(messages)} sites did not reply within {timeout:.0f} s (federation.round_timeout): "
            + ", ".join(sorted(silent))]


def evaluate_round(grid: Grid, strategy: Strategy, arrays: ArrayRecord, report: RoundReport, fed: FederationConfig,
                   seed: int, config: ConfigRecord | None = None) -> None:
    """Federated evaluation of the aggregate on the sites' test splits (sites without test rows
    are left out of the weighted mean); fills ``report`` in place. Skipped, with the reason in
    ``report.evaluation_skipped``, when its quorum is not connected within the deadline."""
    _seed_sampling(seed, report.round, -1)
    try:
        messages = list(strategy.configure_evaluate(report.round, arrays, ConfigRecord(dict(config or {})),
                                                    _SitesDeadline(grid, fed.connect_timeout)))
    except QuorumError as exc:
        report.evaluation_skipped = f"federated evaluation skipped: {exc}"
        log.warning("round %d: %s", report.round, report.evaluation_skipped)
        return
    if not messages:
        return
    registered = registered_names(grid)
    report.bytes_sent += arrays_nbytes(arrays) * len(messages)
    replies = list(grid.send_and_receive(messages, timeout=fed.round_timeout))
    accepted, rejected = screen_replies(replies, report.round, None, registered)
    report.rejected.extend(rejected + _silent(messages, replies, registered, fed.round_timeout))
    scored = [m for m in accepted if _metrics(m)[wire.NUM_EXAMPLES] > 0]
    report.site_evaluations = {site_name(m, registered): dict(_metrics(m)) for m in scored}
    if scored:
        report.evaluate_metrics = dict(strategy.aggregate_evaluate(report.round, scored) or {})


def run_rounds(grid: Grid, aggregation: Aggregation, arrays: ArrayRecord, first_round: int, fed: FederationConfig,
               seed: int, after_training: Callable[[ArrayRecord, RoundReport], None],
               after_evaluation: Callable[[RoundReport], None], federated_eval: bool = True,
               train_config: ConfigRecord | None = None) -> ArrayRecord:
    """Rounds ``first_round`` .. ``fed.rounds``. ``after_training`` (server-side evaluation,
    checkpoint) runs as soon as a round's training aggregated, so the round is kept whatever
    happens during federated evaluation; ``after_evaluation`` (its results, the round's log line)
    runs once that evaluation is done or skipped, before the next round starts."""
    for server_round in range(first_round, fed.rounds + 1):
        start = time.perf_counter()
        log.info("round %d/%d", server_round, fed.rounds)
        arrays, report = train_round(grid, aggregation, arrays, server_round, fed, seed, train_config)
        report.seconds = time.perf_counter() - start
        after_training(arrays, report)
        if federated_eval:
            start = time.perf_counter()
            evaluate_round(grid, aggregation.strategy, arrays, report, fed, seed, train_config)
            report.seconds += time.perf_counter() - start
        after_evaluation(report)
    return arrays
