"""What the coordinator records and prints of each round: the round's deterministic record (kept
in checkpoints, so a resumed run's history equals an uninterrupted one's), the console's round
line, and ``metrics.jsonl`` brought back in step with the checkpoint a run resumes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from shared_model import wire
from shared_model.atomic_files import write_text_atomic

if TYPE_CHECKING:
    from server.rounds import RoundReport

# Reply metrics that measure time, not the model: kept in metrics.jsonl, left out of the history
# stored in checkpoints, so a resumed run's history equals an uninterrupted one's.
TIMING_KEYS = (wire.SECONDS,)
CONSOLE_WIDTH = 80  # a round's line is broken between fields, never inside one, to fit


def _deterministic(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def zero_shot_summary(results: dict) -> dict:
    """``{task: {"aca": .., "auc": ..}}`` from the common evaluator's results."""
    return {task: {"aca": m["aca"], "auc": m.get("auc")} for task, m in results.get("zero_shot", {}).items()}


def history_record(report: RoundReport, server_eval: dict | None) -> dict:
    """The round's deterministic record (what a resumed run must reproduce exactly)."""
    return {"round": report.round,
            "sites": {name: _deterministic(m) for name, m in report.sites.items()},
            "train": _deterministic(report.train_metrics),
            "federated_eval": _deterministic(report.evaluate_metrics),
            "site_eval": {name: _deterministic(m) for name, m in report.site_evaluations.items()},
            "server_eval": server_eval,
            "rejected": list(report.rejected), "attempts": report.attempts,
            **({"evaluation_skipped": report.evaluation_skipped} if report.evaluation_skipped else {}),
            "bytes_sent": report.bytes_sent, "bytes_received": report.bytes_received}


def site_summary(metrics: dict) -> str:
    """A site's round in a few characters: its total loss, or its ε under DP-SGD (no losses are
    sent); the terms are in metrics.jsonl and report.html."""
    if wire.EPSILON in metrics:
        return f"{metrics[wire.EPSILON]:.3g}"
    return f"{metrics['loss.total']:.3f}" if "loss.total" in metrics else "–"


def sites_summary(record: dict) -> tuple[str, str]:
    """What the sites' figures are ("loss", or "ε" under DP-SGD) and every site's
    :func:`site_summary` in site order, e.g. ``("loss", "3.434 / 3.464 / 3.409")``."""
    label = "ε" if any(wire.EPSILON in m for m in record["sites"].values()) else "loss"
    return label, " / ".join(site_summary(m) for m in record["sites"].values())


def round_row(record: dict, seconds: float | None) -> str:
    """A round as the console prints it: each site's loss (ε under DP-SGD), the aggregate's
    zero-shot ACA per task (named by modality alone when there is one set), time, bytes moved;
    on one line when it fits :data:`CONSOLE_WIDTH`, else continued on indented lines, broken
    between fields (many sites or eval sets)."""
    evals = record["server_eval"] or {}
    one_set = len({task.split("/")[0] for task in evals}) == 1
    aca = [f"{task.split('/')[-1] if one_set else task} {v['aca']:.3f}" for task, v in evals.items()]
    moved = (record["bytes_sent"] + record["bytes_received"]) / 2 ** 20
    label, sites = sites_summary(record)
    took = "–" if seconds is None else f"{seconds:.0f}"
    shown = ["ACA " + aca[0], *aca[1:]] if aca else ["not evaluated"]
    fields = [f"round {record['round']}", f"{label} {sites}", *shown, f"{took} s", f"{moved:.0f} MiB"]
    lines = [fields[0]]
    for part in fields[1:]:
        if len(lines[-1]) + 2 + len(part) <= CONSOLE_WIDTH:
            lines[-1] += "  " + part
        else:
            lines.append("    " + part)
    return "\n".join(lines)


def sync_metrics(path: Path, history: list[dict]) -> None:
    """Make ``metrics.jsonl`` hold exactly the rounds of the checkpoint a run resumes from: later
    rounds are run again and logged again; a checkpointed round whose line was never written
    (the run ended during its federated evaluation) is logged from the checkpoint, untimed."""
    last_round = history[-1]["round"] if history else 0
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    kept = [line for line in lines if json.loads(line)["round"] <= last_round]
    logged = {json.loads(line)["round"] for line in kept}
    kept += [json.dumps({**record, "seconds": None}) for record in history if record["round"] not in logged]
    write_text_atomic(path, "".join(line + "\n" for line in kept))
