"""Aggregation: the coordinator's FedAvg of K site updates of the base model (the arrays a site
sends, as Flower ``ArrayRecord`` replies) against the memory-bandwidth floor, the time NumPy
takes to read the same bytes once. K = 4, 16, 64; a K whose updates do not fit in this
machine's free memory is reported as not measured."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from bench.common import Row, check, median_seconds
from server.streaming_mean import array_view, weighted_mean
from shared_model import wire
from shared_model.conf import compose_app
from shared_model.model import build_model
from shared_model.model.exchange import exchanged_state_dict

TARGET = "<= 2"


def base_update() -> dict[str, np.ndarray]:
    """The arrays one site sends for the base preset (float32)."""
    torch.manual_seed(0)
    model = build_model(compose_app("train", ["model=base"]).model)
    return {k: v.numpy() for k, v in exchanged_state_dict(model).items()}


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (the whole RAM where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_once(records: list[RecordDict]) -> float:
    """Read every value of every update once (the floor any aggregation pays)."""
    return float(sum(np.add.reduce(array_view(a), axis=None) for record in records for a in record["arrays"].values()))


def measure(quick: bool) -> list[Row]:
    update = base_update() if not quick else {"w": np.random.default_rng(0).random((1000, 1000), dtype=np.float32)}
    size = sum(a.nbytes for a in update.values())
    counts = [2, 4] if quick else [4, 16, 64]
    rows = []
    rng = np.random.default_rng(0)
    for k in counts:
        if (k + 3) * size > 0.8 * available_bytes():  # the updates, plus Flower's copies of one
            rows.append(Row("aggregation", f"FedAvg, K = {k}, {size / 2 ** 20:.0f} MiB per update", "not measured",
                            f"needs {k * size / 2 ** 30:.1f} GiB of updates in memory", float("nan"), TARGET, None,
                            "more than this machine's free memory allows"))
            continue
        records = [RecordDict({wire.ARRAYS: ArrayRecord({name: Array(a + rng.standard_normal(1, dtype=np.float32))
                                                      for name, a in update.items()}),
                               wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: int(rng.integers(50, 500))})})
                   for _ in range(k)]
        repeats = 2 if quick else 3
        floor = median_seconds(lambda records=records: read_once(records), torch.device("cpu"), repeats)
        # The strategy keeps its running sums from round to round; the repeats are rounds.
        ours = functools.partial(weighted_mean, buffers={})
        for name, fn in (("ours (server/streaming_mean.py)", ours),
                         ("Flower's aggregate_arrayrecords", aggregate_arrayrecords)):
            seconds = median_seconds(lambda fn=fn, records=records: fn(records, wire.NUM_EXAMPLES), torch.device("cpu"),
                                     repeats)
            ratio = seconds / floor
            rows.append(Row("aggregation", f"FedAvg, K = {k}, {size / 2 ** 20:.0f} MiB per update: {name}",
                            f"{seconds:.3f} s ({k * size / seconds / 2 ** 30:.1f} GiB/s)",
                            f"{floor:.3f} s read once", ratio, TARGET, check(ratio, TARGET)))
        records.clear()  # free this K's updates before the next K is built
    return rows
