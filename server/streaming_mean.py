"""FedAvg's weighted mean of site updates (McMahan et al. 2017) at the speed of reading them.
Flower's ``aggregate_arrayrecords`` decodes every array into a new buffer (``np.load``),
multiplies it into another and adds that into the running sum: several trips through memory per
update, and ``np.save`` copies the result twice more into the reply's bytes. Here every array is
read in place from the reply's .npy bytes (header parsed, never unpickled) and added with one
fused multiply-add per update (torch's ``add_(x, alpha=w)``, on one thread: the add is bound by
memory bandwidth, and with the coordinator's cores busy — the SuperLink beside it, training or
evaluation — the thread pool's barriers cost milliseconds per array, 30x the add itself measured
on 2 loaded cores) into a running sum
(:class:`RunningMean`, one update at a time, as :mod:`server.round_fold` feeds it while replies
arrive) kept from round to round, copied once into the aggregate's .npy bytes
(``bench/aggregation.py`` measures both against the time to read the updates once).

``StreamingFedAvg`` and ``StreamingFedProx`` are Flower's strategies with this aggregation;
everything else (sampling, configuration, metric aggregation) is Flower's."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

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


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside (see the module doc), as many as before afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    return header.getvalue()


class RunningMean:
    """A weighted mean of updates added one at a time into one running sum (float arrays keep
    their dtype, others are summed in float64), so memory stays one model copy whatever the
    number of updates. ``buffers`` keeps the sums' memory from round to round (memory already
    mapped is faster); :meth:`mean` copies the result out, so reusing them is safe."""

    def __init__(self, buffers: dict[str, np.ndarray] | None = None):
        self._buffers = {} if buffers is None else buffers
        self._sums: dict[str, torch.Tensor] = {}
        self.total = 0.0

    def add(self, arrays: Mapping[str, np.ndarray], weight: float, scale: float = 1.0,
            base: Mapping[str, np.ndarray] | None = None) -> None:
        """Add ``weight`` x the update ``base + scale (arrays - base)`` (a change clipped by
        ``scale`` from the global weights ``base``; with ``scale`` 1, ``arrays`` themselves) as two
        fused multiply-adds, no temporary array."""
        with one_thread():
            self._add(arrays, weight, scale, base)
        self.total += weight

    def _add(self, arrays: Mapping[str, np.ndarray], weight: float, scale: float,
             base: Mapping[str, np.ndarray] | None) -> None:
        for key, view in arrays.items():
            terms = [(view, weight * scale)] + ([(base[key], weight * (1.0 - scale))] if scale != 1.0 else [])
            terms = [(v if np.issubdtype(v.dtype, np.floating) else v.astype(np.float64), c) for v, c in terms]
            acc = self._sums.get(key)
            if acc is None:
                first, coefficient = terms.pop(0)
                out = self._buffers.get(key)
                if out is None or out.shape != first.shape or out.dtype != first.dtype:
                    out = self._buffers[key] = np.empty(first.shape, first.dtype)
                acc = self._sums[key] = torch.from_numpy(out)
                torch.mul(_tensor(first), coefficient, out=acc)
            for v, c in terms:
                acc.add_(_tensor(v), alpha=c)

    def scale_to_mean(self) -> dict[str, np.ndarray]:
        """Divide the sums by the total weight, in place; the mean as NumPy arrays (writable: noise
        can be added to them before :meth:`mean` copies them out)."""
        with one_thread():
            for acc in self._sums.values():
                acc.mul_(1.0 / self.total)
        self.total = 1.0
        return {key: acc.numpy() for key, acc in self._sums.items()}

    def mean(self) -> ArrayRecord:
        """The weighted mean, each array copied once into its .npy bytes."""
        mean = {}
        for key, out in self.scale_to_mean().items():
            data = b"".join((_npy_header(out.shape, out.dtype), memoryview(out.reshape(-1).view(np.uint8))))
            mean[key] = Array(dtype=str(out.dtype), shape=tuple(out.shape), stype="numpy.ndarray", data=data)
        return ArrayRecord(mean)


def weighted_mean(contents: list[RecordDict], weight_key: str,
                  buffers: dict[str, np.ndarray] | None = None) -> ArrayRecord:
    """The mean of the replies' ArrayRecords weighted by their ``weight_key`` metric (what Flower's
    ``aggregate_arrayrecords`` computes), through :class:`RunningMean`."""
    running = RunningMean(buffers)
    for content in contents:
        record = next(iter(content.array_records.values()))
        running.add({key: array_view(array) for key, array in record.items()},
                    float(next(iter(content.metric_records.values()))[weight_key]))
    return running.mean()


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
