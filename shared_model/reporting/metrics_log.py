"""The run folder's ``metrics.jsonl`` (one JSON line per logged step, round or epoch), mirrored,
when asked, to TensorBoard event files in ``RUN_DIR/tensorboard`` (local files only: nothing
is sent anywhere; ``tensorboard --logdir RUN_DIR/tensorboard`` shows them).

Every numeric leaf of a record becomes one TensorBoard scalar named by its path
(``sites/site_0/loss``, ``server_eval/heldout/CFP/aca``); the record's ``round`` or ``step``
is the x axis."""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def scalar_leaves(record: dict, prefix: str = "") -> dict[str, float]:
    """``{"a/b": number}`` for every finite int/float leaf of a nested record (booleans left out)."""
    leaves: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            leaves.update(scalar_leaves(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            leaves[name] = float(value)
    return leaves


class MetricsLog:
    """Appends records to ``run_dir/metrics.jsonl`` (and TensorBoard when ``tensorboard``)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False):
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ValueError("report.tensorboard=true needs the tensorboard package "
                                 "(pip install 'retinafl[tensorboard]')") from exc
            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))

    def append(self, record: dict) -> None:
        """Write ``record`` as one line; its ``round`` (or ``step``) is TensorBoard's step."""
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = int(record.get("round", record.get("step", 0)))
            for name, value in scalar_leaves(record).items():
                if name not in ("round", "step"):
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the JSONL file is closed after every line)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``; a torn last line (a crash mid-write) is ignored,
    a damaged earlier line fails naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
    return records
