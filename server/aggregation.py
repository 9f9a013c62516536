"""How a round's accepted updates become the next global model: the one home of aggregation.

:class:`Aggregation` is built once per run from the config. It holds the Flower strategy chosen
by name — FedAvg and FedProx averaging with :mod:`server.streaming_mean`; FedAdam, FedYogi,
FedTrimmedAvg, FedMedian and Krum as Flower has them — wrapped, for client-level DP, in Flower's
server-side clipping (:mod:`server.central_dp`), and the run's update encoding. Each round,
:meth:`Aggregation.decode` turns a bf16 or int8 delta back into weights before it is screened,
:meth:`Aggregation.begin` starts the round's fold (:mod:`server.round_fold`), into which each
accepted update goes as it arrives, and :meth:`Aggregation.finish` makes the aggregate, always in
the global model's dtypes. The strategy's round-to-round state (FedAdam/FedYogi moments) is
checkpointed with every round through :meth:`Aggregation.state` and :meth:`Aggregation.restore`.

The config names a registry entry, never an import path: whoever submits a run cannot make the
coordinator import arbitrary code.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedMedian, FedTrimmedAvg, FedYogi, Krum, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from server.central_dp import wrap_central_dp
from server.round_fold import KeptFold, MeanFold, RoundFold, SecureFold
from server.streaming_mean import StreamingFedAvg, StreamingFedProx
from server.update_screen import names_mismatch
from shared_model import wire
from shared_model.config import FederationAppConfig, FederationConfig, StrategyConfig
from shared_model.model.update_codec import DELTA_ENCODINGS, decode_update, weight_names

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedtrimmedavg", "fedmedian", "krum")
# Attributes of Flower's FedOpt family that carry state from round to round.
STATE_ATTRIBUTES = ("m_t", "v_t")


def build_strategy(cfg: StrategyConfig, fed: FederationConfig, weighted_by_key: str = wire.NUM_EXAMPLES) -> Strategy:
    """The configured Flower strategy, with the federation's quorum as its minimum node counts;
    replies are weighted by their ``weighted_by_key`` metric."""
    common = {"fraction_train": cfg.fraction_train, "fraction_evaluate": cfg.fraction_evaluate,
              "min_train_nodes": fed.min_sites, "min_evaluate_nodes": 1 if cfg.fraction_evaluate > 0 else 0,
              "min_available_nodes": fed.min_available, "weighted_by_key": weighted_by_key,
              "train_metrics_aggr_fn": mean_of_reported}
    server_opt = {"eta": cfg.server_lr, "eta_l": cfg.server_lr_local, "beta_1": cfg.beta_1, "beta_2": cfg.beta_2,
                  "tau": cfg.tau}
    builders = {
        "fedavg": lambda: StreamingFedAvg(**common),
        "fedprox": lambda: StreamingFedProx(**common, proximal_mu=cfg.proximal_mu),
        "fedadam": lambda: FedAdam(**common, **server_opt),
        "fedyogi": lambda: FedYogi(**common, **server_opt),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=cfg.trim_fraction),
        "fedmedian": lambda: FedMedian(**common),
        "krum": lambda: Krum(**common, num_malicious_nodes=cfg.byzantine_sites),
    }
    if cfg.name not in builders:
        raise ValueError(f"strategy.name={cfg.name!r} is not one of {', '.join(STRATEGIES)}")
    return builders[cfg.name]()


def mean_of_reported(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """The weighted mean of each reply metric over the replies that report it. Flower's default
    divides by every reply's weight, so a loss term that a site did not compute (no modality
    pairs there) would be pulled towards 0 as if that site had computed 0."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = float(metrics[weighting_metric_name])
        for key, value in metrics.items():
            if key == weighting_metric_name or isinstance(value, list):
                continue
            sums[key] = sums.get(key, 0.0) + weight * float(value)
            weights[key] = weights.get(key, 0.0) + weight
    return MetricRecord({key: sums[key] / weights[key] for key in sums if weights[key] > 0})


def cast_like(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` in the dtypes of ``reference``: server optimizers (FedAdam, FedYogi) compute in
    float64, but the global model — what is checkpointed and sent — stays in its own dtype, so a
    resumed run continues from exactly what an uninterrupted one holds."""
    return ArrayRecord({k: v if v.dtype == reference[k].dtype else Array(v.numpy().astype(reference[k].dtype))
                        for k, v in arrays.items()})


def decode_updates(replies: list[Message], global_arrays: ArrayRecord, encoding: str
                   ) -> tuple[list[Message], dict[int, str]]:
    """Turn delta-encoded updates (``bf16-delta``, ``int8-delta``) back into weights over
    ``global_arrays`` (in place); returns the replies to screen and, by reply ``id``, why the
    others' update does not decode."""
    kept, reasons = [], {}
    reference = {key: array.numpy() for key, array in global_arrays.items()}
    for msg in replies:
        if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
            kept.append(msg)
            continue
        arrays = msg.content[wire.ARRAYS]
        try:
            names = names_mismatch(weight_names(arrays.keys()), reference)
            if names:
                raise ValueError(names)
            decoded = decode_update(encoding, {key: array.numpy() for key, array in arrays.items()}, reference)
        except (ValueError, TypeError) as exc:
            reasons[id(msg)] = f"update is not a {encoding} of the global model ({exc}); rejected"
            continue
        msg.content[wire.ARRAYS] = ArrayRecord({key: Array(value) for key, value in decoded.items()})
        kept.append(msg)
    return kept, reasons


class Aggregation:
    """A run's aggregation rule: strategy (with central DP), update encoding, SecAgg+ or not."""

    def __init__(self, cfg: FederationAppConfig):
        central = cfg.privacy.central != "none"
        self.weight_key = wire.SITE_WEIGHT if central else wire.NUM_EXAMPLES
        self._inner = build_strategy(cfg.strategy, cfg.federation, self.weight_key)
        # What samples, configures and aggregates; its state lives in the inner strategy.
        self.strategy = wrap_central_dp(self._inner, cfg.privacy, cfg.federation) if central else self._inner
        self.encoding = cfg.federation.update_encoding
        self.secagg = cfg.secagg  # SecAgg+: the sites' updates arrive only as a securely summed mean
        self._sum_buffers: dict[str, np.ndarray] = {}  # the running sums' memory, kept from round to round

    def decode(self, replies: list[Message], global_arrays: ArrayRecord) -> tuple[list[Message], dict[int, str]]:
        """Updates as weights of the global model, ready to be screened: bf16 and int8 deltas are
        decoded (see :func:`decode_updates`); fp32 weights and SecAgg+'s masked vectors pass as they are."""
        if self.encoding in DELTA_ENCODINGS and not self.secagg.enabled:
            return decode_updates(replies, global_arrays, self.encoding)
        return replies, {}

    def begin(self, server_round: int, global_arrays: ArrayRecord) -> RoundFold:
        """A new fold for one try at a round (:mod:`server.round_fold`): accepted replies go in one
        at a time with ``add``, ``result`` makes the aggregate."""
        if self.secagg.enabled:
            return SecureFold(server_round, global_arrays, self.weight_key, self._inner.train_metrics_aggr_fn)
        if isinstance(self._inner, (StreamingFedAvg, FedOpt)):
            return MeanFold(server_round, global_arrays, self.strategy, self._inner, self.weight_key,
                            self._sum_buffers)
        return KeptFold(server_round, global_arrays, self.strategy, self._inner, self.weight_key)

    def finish(self, fold: RoundFold) -> tuple[ArrayRecord | None, dict]:
        """The next global weights (None if the strategy made none), in the global model's dtypes,
        and the replies' aggregated metrics."""
        aggregate, metrics = fold.result()
        return (None if aggregate is None else cast_like(aggregate, fold.global_arrays)), metrics

    @property
    def central_clipping_norm(self) -> float | None:
        """Client-level DP's clipping norm for the next round (adaptive clipping moves it after
        every round; checkpointed with the privacy state), None without client-level DP."""
        return float(self.strategy.clipping_norm) if self.strategy is not self._inner else None

    @central_clipping_norm.setter
    def central_clipping_norm(self, value: float) -> None:
        self.strategy.clipping_norm = float(value)

    def state(self) -> dict[str, np.ndarray]:
        """Round-to-round state of the strategy as ``{"m_t/<weight name>": array, ...}`` (empty for
        stateless strategies such as FedAvg)."""
        state = {}
        for attr in STATE_ATTRIBUTES:
            for name, value in (getattr(self._inner, attr, None) or {}).items():
                state[f"{attr}/{name}"] = np.array(value, order="C")  # ascontiguousarray makes 0-d arrays 1-d
        return state

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Put back what :meth:`state` returned; refuses state the strategy does not hold."""
        grouped: dict[str, dict[str, np.ndarray]] = {}
        for key, value in state.items():
            attr, _, name = key.partition("/")
            if attr not in STATE_ATTRIBUTES or not hasattr(self._inner, attr):
                raise ValueError(f"strategy state key {key!r} does not belong to {type(self._inner).__name__}")
            grouped.setdefault(attr, {})[name] = value
        for attr, values in grouped.items():
            setattr(self._inner, attr, values)
