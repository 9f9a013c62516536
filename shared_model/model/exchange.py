"""What a site and the coordinator exchange each round: the model's trainable parameters and
floating-point buffers (BatchNorm running statistics), by state_dict name.

Frozen parameters (the pretrained text encoder when it is not fine-tuned) are identical at every
site, so they never travel; integer buffers (BatchNorm's step counters) are local bookkeeping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn


def app_version() -> str:
    """The installed RetinaFL version (sites and coordinator must run the same)."""
    try:
        return version("retinafl")
    except PackageNotFoundError:
        return "unknown"


def schema_digest(arrays: Mapping) -> str:
    """SHA-256 over (name, shape, dtype) of exchanged arrays (anything with ``.shape``/``.dtype``):
    equal digests mean a site's model and the coordinator's exchange the same tensors."""
    text = "\n".join(f"{name}:{tuple(a.shape)}:{a.dtype}" for name, a in arrays.items())
    return hashlib.sha256(text.encode()).hexdigest()


def exchanged_names(model: nn.Module) -> list[str]:
    """state_dict keys that travel, in state_dict order."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    floating = exchanged_statistics(model)
    return [name for name in model.state_dict() if name in trainable or name in floating]


def exchanged_statistics(model: nn.Module) -> frozenset[str]:
    """The exchanged names that are buffers, not parameters (BatchNorm running statistics)."""
    return frozenset(name for name, b in model.named_buffers() if b.is_floating_point())


def exchanged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The travelling part of the state_dict, detached, contiguous, fp32, on the CPU."""
    state = model.state_dict()
    return {name: state[name].detach().to("cpu", torch.float32).contiguous() for name in exchanged_names(model)}


def load_exchanged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an exchanged state_dict into ``model``; the key set and shapes must match exactly."""
    expected = exchanged_names(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"exchanged weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                         f" ({len(missing)} missing, {len(unexpected)} unexpected)")
    own = model.state_dict()
    for name in expected:
        if tuple(state[name].shape) != tuple(own[name].shape):
            raise ValueError(f"exchanged weight {name!r}: shape {tuple(state[name].shape)}, "
                             f"model has {tuple(own[name].shape)}")
    with torch.no_grad():
        for name in expected:
            own[name].copy_(state[name])


def all_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor with a NaN or infinity, or None when all are finite."""
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            return name
    return None
