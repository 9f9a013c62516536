"""A round's aggregate, built while its replies arrive: each accepted update is folded in and its
arrays released, so the coordinator holds the global weights, one running sum and the update in
hand, whatever the number of sites (NVIDIA FLARE's memory-efficient FedAvg does the same).

- :class:`MeanFold` — FedAvg, FedProx (McMahan et al. 2017), FedAdam and FedYogi (Reddi et al.
  2021), and client-level DP: the running weighted mean of :class:`server.streaming_mean.RunningMean`.
  Under client-level DP each update is clipped as it arrives — its change from the global weights
  scaled to at most the clipping norm (McMahan et al. 2018) — and the Gaussian noise is added
  once, to the mean, with Flower's helpers and the norm the updates were clipped with. Adaptive
  clipping (Andrew et al. 2021) moves the norm geometrically towards the quantile
  ``privacy.central_target_quantile`` of update norms from the noised fraction of updates it left
  unclipped (Flower 1.41 counts the clipped ones into the same rule, which then drives the norm
  away from its target). FedAdam and FedYogi take the noised mean as their one reply: Flower's
  server optimizer step follows, post-processing that keeps the guarantee.
- :class:`KeptFold` — FedTrimmedAvg, FedMedian and Krum need every update at once (a coordinate's
  median, distances between updates): they keep the accepted replies, K model copies, and
  aggregate them with Flower's strategy at the end.
- :class:`SecureFold` — under SecAgg+ the sites' updates arrive only as the securely summed mean
  delta of the survivors; the replies carry metrics alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv

from server.streaming_mean import RunningMean, _tensor, array_view, one_thread
from shared_model import wire


def update_norm(views: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """The L2 norm of an update's change from the global weights, over all its arrays (the norm
    Flower's ``get_norm`` takes of the difference), without forming the difference."""
    with one_thread():
            return math.sqrt(sum(float(torch.dist(_tensor(v), _tensor(reference[k]))) ** 2
                             if v.dtype.kind == "f" else float(np.sum((v.astype(np.float64) - reference[k]) ** 2))
                             for k, v in views.items()))


def release_update(msg: Message) -> Message:
    """``msg`` without its update (its metrics and other records kept for the round's report)."""
    if msg.has_content():
        msg.content = RecordDict({key: record for key, record in msg.content.items()
                                  if not isinstance(record, ArrayRecord)})
    return msg


class RoundFold:
    """What every fold keeps: the accepted replies (without their updates, once folded)."""

    def __init__(self, server_round: int, global_arrays: ArrayRecord, weight_key: str, metrics_fn):
        self.server_round = server_round
        self.global_arrays = global_arrays
        self.weight_key = weight_key
        self.metrics_fn = metrics_fn
        self.accepted: list[Message] = []

    def weight(self, msg: Message) -> float:
        return float(next(iter(msg.content.metric_records.values()))[self.weight_key])

    def metrics(self) -> dict:
        """The accepted replies' metrics aggregated by the strategy's rule."""
        return dict(self.metrics_fn([m.content for m in self.accepted], self.weight_key) or {})


class MeanFold(RoundFold):
    """The running weighted mean (see the module doc); ``strategy`` is the configured one, inside
    Flower's server-side clipping wrapper under client-level DP."""

    def __init__(self, server_round: int, global_arrays: ArrayRecord, strategy: Strategy, inner: Strategy,
                 weight_key: str, buffers: dict[str, np.ndarray]):
        super().__init__(server_round, global_arrays, weight_key, inner.train_metrics_aggr_fn)
        self.strategy, self.inner = strategy, inner
        self.dp = strategy if isinstance(strategy, (DifferentialPrivacyServerSideFixedClipping,
                                                    DifferentialPrivacyServerSideAdaptiveClipping)) else None
        self.clipping_norm = self.dp.clipping_norm if self.dp else None  # this round's, fixed while it runs
        self.unclipped = 0  # updates within the clipping norm: adaptive clipping's count
        self._reference = {k: array_view(a) for k, a in global_arrays.items()} if self.dp else None
        self._mean = RunningMean(buffers)

    def add(self, msg: Message) -> None:
        """Fold an accepted reply's update into the mean (clipped under client-level DP), then release it."""
        views = {key: array_view(array) for key, array in msg.content[wire.ARRAYS].items()}
        scale = 1.0
        if self.dp:
            norm = update_norm(views, self._reference)
            scale = min(1.0, self.clipping_norm / norm) if norm > 0 else 1.0
            self.unclipped += norm <= self.clipping_norm
        self._mean.add(views, self.weight(msg), scale, self._reference)
        self.accepted.append(release_update(msg))

    def result(self) -> tuple[ArrayRecord | None, dict]:
        """The aggregate (None without accepted replies) and the replies' metrics."""
        if not self.accepted:
            return None, {}
        if self.dp:
            if isinstance(self.dp, DifferentialPrivacyServerSideAdaptiveClipping):
                self.dp._geometric_update(self.dp._noisy_fraction(self.unclipped, len(self.accepted)))
            mean = self._mean.scale_to_mean()
            add_gaussian_noise_inplace(list(mean.values()),
                                       compute_stdv(self.dp.noise_multiplier, self.clipping_norm,
                                                    self.dp.num_sampled_clients))
        aggregate = self._mean.mean()
        if isinstance(self.inner, FedOpt):  # the server optimizer steps from the mean
            one = Message(RecordDict({wire.ARRAYS: aggregate, wire.METRICS: MetricRecord({self.weight_key: 1.0})}),
                          dst_node_id=0, message_type="train")
            aggregate, _ = self.inner.aggregate_train(self.server_round, [one])
        return aggregate, self.metrics()


class KeptFold(RoundFold):
    """Every accepted reply kept whole, aggregated by the (robust) strategy at the end."""

    def __init__(self, server_round: int, global_arrays: ArrayRecord, strategy: Strategy, inner: Strategy,
                 weight_key: str):
        super().__init__(server_round, global_arrays, weight_key, inner.train_metrics_aggr_fn)
        self.strategy = strategy

    def add(self, msg: Message) -> None:
        self.accepted.append(msg)

    def result(self) -> tuple[ArrayRecord | None, dict]:
        if not self.accepted:
            return None, {}
        aggregate, metrics = self.strategy.aggregate_train(self.server_round, self.accepted)
        return aggregate, dict(metrics or {})


class SecureFold(RoundFold):
    """SecAgg+: the global weights plus the survivors' securely summed mean delta."""

    mean_delta: Sequence[np.ndarray] | None = None  # set once the protocol has unmasked it

    def add(self, msg: Message) -> None:
        self.accepted.append(msg)

    def result(self) -> tuple[ArrayRecord | None, dict]:
        if self.mean_delta is None or not self.accepted:
            return None, {}
        aggregate = ArrayRecord({key: Array(np.asarray(array.numpy().astype(np.float64) + delta, dtype=array.dtype))
                                 for (key, array), delta in zip(self.global_arrays.items(), self.mean_delta,
                                                                strict=True)})
        return aggregate, self.metrics()
