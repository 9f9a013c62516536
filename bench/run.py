"""Run every benchmark on this machine (CUDA when present) and write the table:

  python -m bench.run                      # all, full size: docs/benchmarks.md + runs/bench/results.json
  python -m bench.run --only dp aggregation   # re-measure these; the other rows of the report stay
  python -m bench.run --quick              # seconds-sized versions (CI: the harness still works), runs/bench/

Every row is a ratio measured in the same run against its baseline (figure, baseline, ratio,
target, pass/fail); timings interleave contenders so machine load hits them alike."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import (
    aggregation,
    communication,
    data_pipeline,
    dp_overhead,
    gpu_check,
    simulation_overhead,
    synthetic_sampling,
    training_step,
)
from bench.common import Row, device, machine, ratio_text, table_lines, verdict

BENCHMARKS = {
    "training": (training_step, lambda dev, quick: training_step.measure(dev, quick)),
    "dp": (dp_overhead, lambda dev, quick: dp_overhead.measure(dev, quick)),
    "aggregation": (aggregation, lambda dev, quick: aggregation.measure(quick)),
    "communication": (communication, lambda dev, quick: communication.measure(quick)),
    "simulation": (simulation_overhead, lambda dev, quick: simulation_overhead.measure(quick)),
    "data": (data_pipeline, lambda dev, quick: data_pipeline.measure(dev, quick)),
    "sampling": (synthetic_sampling, lambda dev, quick: synthetic_sampling.measure(dev, quick)),
}


def markdown(rows: list[Row], info: dict, runs: dict[str, dict], quick: bool, gpu: dict | None = None) -> str:
    """docs/benchmarks.md: machine and versions, the table, what each benchmark measures, and the
    GPU check's section (``gpu``: its recorded results; None: its rows say not measured)."""
    lines = ["# Benchmarks", "",
             "Written by `python -m bench.run`" + (" --quick (reduced sizes: not figures to quote)" if quick else "")
             + ". Each ratio is measured in one run against its baseline on the same machine.", "",
             "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in info.items()], "",
             *table_lines(rows), "", "## What each row measures", ""]
    for name, (module, _) in BENCHMARKS.items():
        doc = " ".join(module.__doc__.split("\n\n")[0].split())
        took = runs.get(name, {}).get("seconds")
        when = (f", measured {runs[name]['date']}" + (f" in {took:.0f} s" if took is not None else "")
                if name in runs else ", not run")
        lines.append(f"- **{name}** (`bench/{Path(module.__file__).name}`{when}): {doc}")
    return "\n".join(lines) + "\n\n" + gpu_check.section(gpu)


def _kept(out: Path, rerun: list[str]) -> tuple[list[Row], dict[str, dict]]:
    """Rows and run dates of the benchmarks an earlier report holds and this run does not redo."""
    path = out.with_name("benchmarks.json")
    if not path.is_file():
        return [], {}
    earlier = json.loads(path.read_text())
    runs = {k: v for k, v in earlier.get("runs", {}).items() if k in BENCHMARKS and k not in rerun}
    rows = [Row(**r) for r in earlier["rows"] if r.get("key") in runs]
    return rows, runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness works")
    parser.add_argument("--out", type=Path,
                        help="markdown report (default docs/benchmarks.md; runs/bench/ with --quick)")
    args = parser.parse_args(argv)
    out = args.out or (Path("runs/bench/benchmarks.md") if args.quick else Path("docs/benchmarks.md"))
    dev = device()
    console = Console()
    chosen = args.only or list(BENCHMARKS)
    rows, runs = _kept(out, chosen) if args.only else ([], {})
    for name in chosen:
        console.print(f"[bold]{name}[/bold] …")
        start = time.perf_counter()
        measured = BENCHMARKS[name][1](dev, args.quick)
        runs[name] = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                      "seconds": time.perf_counter() - start}
        for row in measured:
            row.key = name
            console.print(f"  {row.case}: {row.figure} vs {row.baseline} -> {ratio_text(row)} {row.target} "
                          f"{verdict(row)}", highlight=False)
        rows += measured
    info = machine(dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    order = list(BENCHMARKS)
    rows.sort(key=lambda r: order.index(r.key))
    out.write_text(markdown(rows, info, runs, args.quick, gpu_check.load(out.parent)))
    out.with_name("benchmarks.json").write_text(json.dumps({"machine": info, "runs": runs,
                                                            "rows": [r.as_dict() for r in rows]},
                                                           indent=1, allow_nan=True) + "\n")
    table = Table("benchmark", "case", "ratio", "target", "result", title=str(out))
    for r in rows:
        table.add_row(r.benchmark, r.case, ratio_text(r), r.target or "–", verdict(r))
    console.print(table)


if __name__ == "__main__":
    main()
