"""What every benchmark shares: a result row (figure, baseline, ratio, target, verdict), timing
that waits for the GPU and keeps the median of repeats, the device chosen automatically, and a
description of the machine and versions for docs/benchmarks.md."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from shared_model.runtime import resolve_device


@dataclass
class Row:
    """One line of the table. ``ratio`` = figure / baseline in the unit the name gives; ``target``
    says which side passes (``<= 1.5`` or ``>= 1.6``); ``passed`` is None without a target."""

    benchmark: str
    case: str
    figure: str
    baseline: str
    ratio: float
    target: str = ""
    passed: bool | None = None
    note: str = ""
    key: str = ""  # the bench.run name of the benchmark that measured it

    def as_dict(self) -> dict:
        return asdict(self)


def verdict(row: Row) -> str:
    """A row's result column: pass, FAIL, or – without a target."""
    return "–" if row.passed is None else "pass" if row.passed else "FAIL"


def ratio_text(row: Row) -> str:
    """A row's ratio to two decimals (– when not measured)."""
    return "–" if math.isnan(row.ratio) else f"{row.ratio:.2f}"


def table_lines(rows: list[Row]) -> list[str]:
    """The markdown table of docs/benchmarks.md: header and one line per row."""
    lines = ["| benchmark | case | figure | baseline | ratio | target | result |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.benchmark} | {r.case} | {r.figure} | {r.baseline}{note} | {ratio_text(r)} | "
                     f"{r.target or '–'} | {verdict(r)} |")
    return lines


def check(ratio: float, target: str) -> bool | None:
    """Whether ``ratio`` meets ``target`` (``"<= x"`` or ``">= x"``); None when there is no target."""
    if not target:
        return None
    op, value = target.split()
    return ratio <= float(value) if op == "<=" else ratio >= float(value)


def device() -> torch.device:
    """CUDA when present, else CPU (``RETINAFL_BENCH_DEVICE`` overrides)."""
    return resolve_device(os.environ.get("RETINAFL_BENCH_DEVICE", "auto"))


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median_seconds(fn: Callable[[], object], dev: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(fns: dict[str, Callable[[], object]], dev: torch.device, repeats: int,
                        warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function, calls interleaved (a, b, a, b, ...) so that a change in
    machine load during the run hits every contender alike: what makes a ratio trustworthy."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(dev)
            start = time.perf_counter()
            fn()
            synchronize(dev)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timed_calls(seconds: list[float], fn: Callable, dev: torch.device = torch.device("cpu")) -> Callable:
    """``fn`` appending the wall time of each of its calls to ``seconds`` (waiting for ``dev``'s
    queued work on both sides, so that a GPU's work lands in the call that queued it)."""
    def timed(*args, **kwargs):
        synchronize(dev)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            synchronize(dev)
            seconds.append(time.perf_counter() - start)
    return timed


def machine(dev: torch.device) -> dict:
    """Machine, versions and date, as the report's header states them."""
    import flwr
    import opacus

    info = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
            "opacus": opacus.__version__, "device": str(dev)}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["gpus"] = torch.cuda.device_count()
    return info


def run_arms(arms: list[str], seeds: list[int], run_arm: Callable[[str, int], dict]) -> dict[str, list[dict]]:
    """``run_arm(arm, seed)`` of every experiment arm for every seed, seed by seed, so that a run
    cut short still has whole seeds; returns each arm's results in seed order."""
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            runs[arm].append(run_arm(arm, seed))
    return runs
