"""Aggregation: one FedAvg round of the coordinator over K site updates of the base model
(``server/rounds.py``'s ``train_round``: replies pulled one at a time, screened, folded into the
running mean and released), each reply handed over as the ServerApp gets it from the SuperLink
(deflated into Flower's wire objects, then inflated). Per K = 4, 16, 64, two rounds in a fresh
process: the ServerApp's peak memory above what it held before them (the global weights), in
model copies, and the second round's fold time (screened replies added, the mean made) against
the floor, the time to read the same updates once; beside it, the adds alone: the mean's one
write into new .npy bytes (fresh memory, page by page) costs the same whatever K. Flower's
way (``send_and_receive``, every reply held, then ``aggregate_arrayrecords``) runs beside it
where its K updates fit in this machine's memory. Replies not yet pulled wait in the
SuperLink's SQLite database on disk (``retina-server superlink --state-dir``); the SuperLink's
own memory is not measured here."""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from bench.common import Row, check, timed_calls
from server.aggregation import Aggregation
from server.round_fold import MeanFold
from server.rounds import train_round
from server.server_cli import COORDINATOR_MALLOC
from server.streaming_mean import array_view
from shared_model import wire
from shared_model.conf import compose_app
from shared_model.config import FederationAppConfig, FederationConfig, StrategyConfig
from shared_model.model import build_model
from shared_model.model.exchange import exchanged_state_dict
from tests.fixtures.in_process_grid import InProcessGrid

TIME_TARGET = "<= 1.2"
MEMORY_TARGET = "<= 3.25"  # model copies above the global weights: sum, reply in hand, aggregate, + overhead
WAYS = {"fold": "ours (one reply at a time)", "flower": "Flower (all replies held, aggregate_arrayrecords)"}


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


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


def read_once(arrays: ArrayRecord) -> None:
    """Read every value of an update once (the floor any aggregation pays)."""
    for array in arrays.values():
        np.add.reduce(array_view(array), axis=None)


class WireSites:
    """K sites whose replies are made when pulled (``grid``: a lazy in-process Grid): the global
    weights moved by a per-site offset, deflated into Flower's wire objects and inflated again,
    as the ServerApp receives a reply. ``floor`` adds up the time to read each update once."""

    def __init__(self, sites: int, global_arrays: ArrayRecord, seed: int = 0):
        self.global_views = {key: array_view(array) for key, array in global_arrays.items()}
        self.rng = np.random.default_rng(seed)
        self.floor = 0.0
        nodes = range(1, sites + 1)
        self.grid = InProcessGrid({node: self.reply for node in nodes}, {node: f"site-{node:03d}" for node in nodes},
                                  lazy=True)

    def reply(self, msg: Message) -> Message:
        arrays = ArrayRecord({key: Array(np.asarray(view + np.float32(self.rng.standard_normal())))
                              for key, view in self.global_views.items()})
        metrics = MetricRecord({wire.NUM_EXAMPLES: int(self.rng.integers(50, 500)),
                                wire.SERVER_ROUND: int(msg.content["config"]["server-round"])})
        reply = Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=msg)
        object_id = reply.object_id
        contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(reply).items()}
        del reply, arrays
        received = inflate_object_from_contents(object_id, contents)
        del contents
        start = time.perf_counter()
        read_once(received.content[wire.ARRAYS])
        self.floor += time.perf_counter() - start
        return received


def worker(sites: int, way: str, quick: bool) -> dict:
    """Two rounds in this process: the peak memory above what it held before them (the global
    weights), and the second round's fold and floor seconds."""
    update = ({"w": np.random.default_rng(0).random((1024, 1024), dtype=np.float32),
               "v": np.zeros(4096, np.float32)} if quick else base_update())
    global_arrays = ArrayRecord({key: Array(value) for key, value in update.items()})
    size = sum(value.nbytes for value in update.values())
    del update
    fed = FederationConfig(rounds=1, min_sites=sites, min_available=sites, connect_timeout=5.0,
                           round_timeout=600.0, round_retries=0)
    aggregation = Aggregation(FederationAppConfig(strategy=StrategyConfig(name="fedavg"), federation=fed))
    wire_sites = WireSites(sites, global_arrays)
    grid = wire_sites.grid
    adds: list[float] = []
    made: list[float] = []  # the aggregate made from the sums (Flower's way: the whole aggregation)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # the peak (VmHWM) starts again from here
        fh.write("5")
    start_rss = _status_bytes("VmRSS")
    if way == "fold":
        MeanFold.add = timed_calls(adds, MeanFold.add)
        Aggregation.finish = timed_calls(made, Aggregation.finish)
    for server_round in (1, 2):  # timed: the second, as every round after the first (running sums mapped)
        adds.clear()
        made.clear()
        wire_sites.floor = 0.0
        if way == "fold":
            aggregate, _ = train_round(grid, aggregation, global_arrays, server_round, fed, 0)
        else:
            messages = list(aggregation.strategy.configure_train(server_round, global_arrays, ConfigRecord(), grid))
            contents = [m.content for m in grid.send_and_receive(messages)]
            aggregate = timed_calls(made, aggregate_arrayrecords)(contents, wire.NUM_EXAMPLES)
            del messages, contents
        assert aggregate is not None and list(aggregate) == list(global_arrays)
        del aggregate
    return {"peak": _status_bytes("VmHWM") - start_rss, "size": size, "adds": sum(adds), "made": sum(made),
            "floor": wire_sites.floor}


def _run_worker(sites: int, way: str, quick: bool) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = {**COORDINATOR_MALLOC, **os.environ, "PYTHONPATH": str(root)}  # as retina-server superlink runs it
    done = subprocess.run([sys.executable, "-m", "bench.aggregation", str(sites), way] + (["--quick"] if quick else []),
                          cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"aggregation worker K={sites} {way} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(quick: bool) -> list[Row]:
    counts = [2] if quick else [4, 16, 64]
    size = 4 * (1024 * 1024 + 4096) if quick else sum(a.nbytes for a in base_update().values())
    rows = []
    for k in counts:
        for way, name in WAYS.items():
            held = k if way == "flower" else 1
            case = f"FedAvg, K = {k}, {size / 2 ** 20:.0f} MiB per update: {name}"
            if (held + 4) * size > 0.8 * available_bytes():
                rows.append(Row("aggregation", case, "not measured", f"needs {held * size / 2 ** 30:.1f} GiB of "
                                "updates in memory", float("nan"), MEMORY_TARGET, None,
                                "more than this machine's free memory allows"))
                continue
            got = _run_worker(k, way, quick)
            copies = got["peak"] / got["size"]
            rows.append(Row("aggregation", f"{case}, peak memory", f"+{got['peak'] / 2 ** 30:.2f} GiB",
                            f"{got['size'] / 2 ** 30:.2f} GiB one update", copies, MEMORY_TARGET,
                            check(copies, MEMORY_TARGET), "ratio in model copies"))
            fold = got["adds"] + got["made"]
            ratio = fold / got["floor"]
            rows.append(Row("aggregation", f"{case}, time", f"{fold:.2f} s "
                            f"({k * got['size'] / fold / 2 ** 30:.1f} GiB/s)",
                            f"{got['floor']:.2f} s read once", ratio, TIME_TARGET, check(ratio, TIME_TARGET)))
            if way == "fold":  # the part that grows with K, without the aggregate's one write
                rows.append(Row("aggregation", f"{case}, time of the adds alone", f"{got['adds']:.2f} s adds "
                                f"(+ {got['made']:.2f} s to make the aggregate)", f"{got['floor']:.2f} s read once",
                                got["adds"] / got["floor"]))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one aggregation round in this process (bench.aggregation)")
    parser.add_argument("sites", type=int)
    parser.add_argument("way", choices=sorted(WAYS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(worker(args.sites, args.way, args.quick)))
