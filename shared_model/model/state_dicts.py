"""Reading state dicts from local files and loading them with a readable account of mismatches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a ``.safetensors`` file or a torch file (``weights_only=True``, never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is reported the same way
        raise CheckpointError(f"{path}: cannot be read as a state dict ({type(exc).__name__}: {exc})") from exc
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a flat mapping of tensors")
    return state


def read_trainer_state(path: Path) -> dict:
    """A trainer's saved state (optimizer, schedule, RNG, position) from ``path``: tensors and
    plain values only (``weights_only=True``); a file that is missing, damaged or holds anything
    else (a pickle that would run code) is a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such trainer state")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is reported the same way
        raise CheckpointError(f"{path}: cannot be read as a trainer state ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                              "nothing in it was executed") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: does not hold a trainer state")
    return state


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names missing, unexpected and wrongly-shaped keys instead of a torch traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{source} does not match this model's architecture"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(f"{len(items)} {label}, e.g. " + "; ".join(items[:4]))
        raise CheckpointError(". ".join(parts))
    model.load_state_dict(state, strict=True)
