"""Per-round checkpoints of a federated run, for resumption and for publishing aggregates.

``RUN_DIR/checkpoints/round_NNNN/`` holds the global model as a RetinaFL checkpoint
(``model.safetensors`` + ``config.json``, loadable by ``retina-eval``), the strategy's state
(``strategy_state.safetensors``: FedAdam/FedYogi moments) and ``server_state.json`` (round,
metrics history, privacy ledger, SHA-256 of every file). A round is written into a temporary
folder that is renamed into place only when complete, so a crash leaves either the whole round
or nothing; at load time the hashes catch a file truncated afterwards, and the previous round is
used instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared_model.atomic_files import write_json_atomic
from shared_model.file_digest import sha256_file

log = logging.getLogger(__name__)

FORMAT = "retinafl-round/1"
STATE_FILE = "server_state.json"
STRATEGY_FILE = "strategy_state.safetensors"
KEEP_ROUNDS = 3


class RoundCheckpointError(ValueError):
    """A round checkpoint is missing, incomplete or corrupt."""


@dataclass
class ServerState:
    """What the coordinator needs besides weights to continue a run."""

    round: int
    history: list[dict] = field(default_factory=list)  # one deterministic record per round
    strategy: str = "fedavg"
    # Privacy settings, the client-level DP accountant and one record per round (server.federation).
    privacy: dict = field(default_factory=lambda: {"mode": "none", "central": {"mode": "none"}, "rounds": []})


def round_dir(run_dir: Path, server_round: int) -> Path:
    """``RUN_DIR/checkpoints/round_NNNN``."""
    return run_dir / "checkpoints" / f"round_{server_round:04d}"


def kept_rounds(run_dir: Path) -> list[Path]:
    """The run's complete round folders, oldest first (not the ``.tmp`` one being written)."""
    return sorted((run_dir / "checkpoints").glob("round_[0-9][0-9][0-9][0-9]"))


def save_round(run_dir: Path, write_model: Callable[[Path, int], list[str]], strategy_state: dict[str, np.ndarray],
               state: ServerState) -> Path:
    """Write round ``state.round`` completely (``write_model(folder, round)`` writes the weights and
    names its files), then rename it into place; keeps the last rounds."""
    from safetensors.numpy import save_file

    final = round_dir(run_dir, state.round)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    written = write_model(tmp, state.round)
    save_file(strategy_state, str(tmp / STRATEGY_FILE), metadata={"format": FORMAT})
    files = {name: sha256_file(tmp / name) for name in (*written, STRATEGY_FILE)}
    _write_state(tmp, state, files)
    for path in tmp.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # a round redone after a resume replaces its earlier copy
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in kept_rounds(run_dir)[:-KEEP_ROUNDS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_state(folder: Path, state: ServerState, files: dict[str, str]) -> None:
    write_json_atomic(folder / STATE_FILE, {"format": FORMAT, "round": state.round, "strategy": state.strategy,
                                            "history": state.history, "privacy": state.privacy, "files": files})


def update_round_state(run_dir: Path, state: ServerState) -> None:
    """Rewrite the saved round's ``server_state.json`` with ``state`` (the round's record after
    its federated evaluation); the weights and their hashes stay as written."""
    folder = round_dir(run_dir, state.round)
    _write_state(folder, state, json.loads((folder / STATE_FILE).read_text())["files"])


def remove_partial_rounds(run_dir: Path) -> list[Path]:
    """Delete ``round_NNNN.tmp`` folders a crash left half-written; returns them."""
    partial = sorted((run_dir / "checkpoints").glob("round_[0-9][0-9][0-9][0-9].tmp"))
    for folder in partial:
        log.warning("removing %s: a round checkpoint left half-written", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return partial


def scan_rounds(run_dir: Path) -> tuple[tuple[Path, ServerState] | None, list[str]]:
    """The newest round checkpoint that verifies, and why each newer one was skipped."""
    skipped = []
    for folder in reversed(kept_rounds(run_dir)):
        try:
            return (folder, verify_round(folder)), skipped
        except RoundCheckpointError as exc:
            skipped.append(f"skipping corrupt round checkpoint: {exc}")
    return None, skipped


def verify_round(folder: Path) -> ServerState:
    """Read a round folder's state, checking every file against its recorded SHA-256."""
    path = folder / STATE_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RoundCheckpointError(f"{path}: unreadable ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise RoundCheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    for name, digest in meta["files"].items():
        if not (folder / name).is_file() or sha256_file(folder / name) != digest:
            raise RoundCheckpointError(f"{folder / name}: missing or SHA-256 differs (truncated or replaced)")
    return ServerState(meta["round"], meta["history"], meta["strategy"], meta["privacy"])


def latest_round(run_dir: Path) -> tuple[Path, ServerState] | None:
    """The newest round checkpoint that verifies; corrupt newer ones are logged and skipped."""
    found, skipped = scan_rounds(run_dir)
    for reason in skipped:
        log.warning(reason)
    return found


def load_strategy_state(folder: Path) -> dict[str, np.ndarray]:
    """The strategy state saved with a (verified) round."""
    from safetensors.numpy import load_file

    return load_file(str(folder / STRATEGY_FILE))
