"""The benchmark harness still works: ``python -m bench.run --quick`` runs every benchmark at
toy sizes and writes a table with a finite ratio in every row it measured (the figures of a
quick run mean nothing; docs/benchmarks.md holds the full run)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from tests.fixtures import processes

REPO = Path(__file__).resolve().parents[2]


def test_every_benchmark_runs_and_reports_ratios(tmp_path):
    done = processes.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path / "bench.md")],
                         cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "benchmarks.json").read_text())["rows"]
    assert {r["benchmark"] for r in rows} == {"training step", "DP overhead", "aggregation", "communication",
                                              "simulation overhead", "data pipeline", "synthetic sampling"}
    measured = [r for r in rows if r["figure"] != "not measured"]
    assert measured and all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in measured)
    table = (tmp_path / "bench.md").read_text()
    assert "| benchmark | case | figure | baseline | ratio | target | result |" in table and "--quick" in table
