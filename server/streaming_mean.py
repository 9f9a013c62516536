"""FedAvg's weighted mean of site updates (McMahan et al. 2017) at the speed of reading them.
Flower's ``aggregate_arrayrecords`` decodes every array into a new buffer (``np.load``),
multiplies it into another and adds that into the running sum: several trips through memory per
update, and ``np.save`` copies the result twice more into the reply's bytes. Here every array is
read in place from the reply's .npy bytes (header parsed, never unpickled) and added with one
fused multiply-add per update (torch's ``add_(x, alpha=w)``, every core) into a running sum
kept from round to round, copied once into the aggregate's .npy bytes (``bench/aggregation.py``
measures both against the time to read the updates once).

``StreamingFedAvg`` and ``StreamingFedProx`` are Flower's strategies with this aggregation;
everything else (sampling, configuration, metric aggregation) is Flower's."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx


def array_view(array: Array) -> np.ndarray:
    """A read-only NumPy view of a Flower ``Array``'s .npy bytes (no copy, no pickle)."""
    stream = io.BytesIO(array.data)
    major, _ = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError("an update array holds Python objects: refused")
    flat = np.frombuffer(array.data, dtype=dtype, offset=stream.tell(), count=int(np.prod(shape)))
    return flat.reshape(shape, order="F" if fortran else "C")


def _tensor(view: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # the view is read-only and is only ever read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(view)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    return header.getvalue()


def weighted_mean(contents: list[RecordDict], weight_key: str,
                  buffers: dict[str, np.ndarray] | None = None) -> ArrayRecord:
    """The mean of the replies' ArrayRecords weighted by their ``weight_key`` metric (what Flower's
    ``aggregate_arrayrecords`` computes; float arrays keep their dtype, others become float64).
    ``buffers`` keeps the running sums from round to round: memory already mapped is faster."""
    weights = [float(next(iter(c.metric_records.values()))[weight_key]) for c in contents]
    total = sum(weights)
    weights = [w / total for w in weights]
    records = [next(iter(c.array_records.values())) for c in contents]
    buffers = {} if buffers is None else buffers
    mean = {}
    for key in records[0]:
        views = [array_view(record[key]) for record in records]
        if not np.issubdtype(views[0].dtype, np.floating):
            views = [v.astype(np.float64) for v in views]
        out = buffers.get(key)
        if out is None or out.shape != views[0].shape or out.dtype != views[0].dtype:
            out = buffers[key] = np.empty(views[0].shape, views[0].dtype)
        acc = torch.from_numpy(out)
        torch.mul(_tensor(views[0]), weights[0], out=acc)
        for view, weight in zip(views[1:], weights[1:]):
            acc.add_(_tensor(view), alpha=weight)
        data = b"".join((_npy_header(out.shape, out.dtype), memoryview(out.reshape(-1).view(np.uint8))))
        mean[key] = Array(dtype=str(out.dtype), shape=tuple(out.shape), stype="numpy.ndarray", data=data)
    return ArrayRecord(mean)


class _StreamingMean:
    """``aggregate_train`` of Flower's FedAvg with :func:`weighted_mean` for the arrays."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        buffers = self.__dict__.setdefault("_sum_buffers", {})
        return (weighted_mean(contents, self.weighted_by_key, buffers),
                self.train_metrics_aggr_fn(contents, self.weighted_by_key))


class StreamingFedAvg(_StreamingMean, FedAvg):
    """Flower's FedAvg, aggregating with :func:`weighted_mean`."""


class StreamingFedProx(_StreamingMean, FedProx):
    """Flower's FedProx, aggregating with :func:`weighted_mean`."""
