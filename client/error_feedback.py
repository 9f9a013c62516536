"""Error feedback for ``int8-delta`` updates at a site (Seide et al. 2014; Karimireddy et al.
2019): the quantisation error a round's update left is kept in the site's state folder
(``STATE_DIR/update_residual/round_NNNN.safetensors``) and added to the next round's delta, so
the rounding errors do not accumulate over rounds. Like the trainer state it is kept per round:
a round the coordinator runs again after a resume reads the residual of the round before it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from shared_model.atomic_files import atomic_path

log = logging.getLogger(__name__)

KEEP_RESIDUALS = 2  # the last round's and the one before


def _path(state_dir: Path, server_round: int) -> Path:
    return state_dir / "update_residual" / f"round_{server_round:04d}.safetensors"


def load_residual(state_dir: Path, server_round: int) -> dict[str, torch.Tensor] | None:
    """The quantisation error left by round ``server_round - 1`` (None for a site's first round, or
    when it is missing or unreadable: the update is then sent without it, which costs accuracy,
    never privacy, so the round goes on with a warning)."""
    from safetensors.torch import load_file

    path = _path(state_dir, server_round - 1)
    if not path.is_file():
        if server_round > 1:
            log.warning("%s: no quantisation residual of round %d; sending this update without it",
                        state_dir, server_round - 1)
        return None
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        log.warning("%s: unreadable quantisation residual (%s); sending this update without it", path, exc)
        return None


def save_residual(state_dir: Path, server_round: int, residual: dict[str, torch.Tensor]) -> None:
    """Keep round ``server_round``'s quantisation error for the next round (atomically; older
    rounds' residuals are removed)."""
    from safetensors.torch import save_file

    path = _path(state_dir, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in residual.items()}, str(tmp))
    for old in sorted(path.parent.glob("round_*.safetensors"))[:-KEEP_RESIDUALS]:
        old.unlink(missing_ok=True)
