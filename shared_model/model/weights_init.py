"""Initialise an image tower from a local checkpoint (RETFound / MAE / timm / open_clip visual).

Key names are mapped onto ours (``cls_token`` -> ``cls_token.token``, ResNet trunk prefix),
position embeddings are dropped (ours are fixed sin-cos), and heads/decoders are ignored.
Like nanoGPT's weight porting, it asserts that what we load matches in count and shape.
"""

from __future__ import annotations

import logging

from torch import nn

from shared_model.model.state_dicts import CheckpointError, read_state_dict

log = logging.getLogger(__name__)

_STRIP_PREFIXES = ("module.", "visual.trunk.", "visual.", "encoder.", "backbone.", "trunk.")
_IGNORED = ("pos_embed", "head.", "fc.", "fc_norm.", "decoder", "mask_token", "attnpool.", "proj")


def _map_key(key: str, own: set[str]) -> str | None:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key == "cls_token":
        key = "cls_token.token"
    for candidate in (key, f"trunk.{key}"):
        if candidate in own:
            return candidate
    return None


def load_image_tower_weights(tower: nn.Module, path: str, min_fraction: float = 0.9) -> None:
    """Copy matching tensors from ``path`` into ``tower``; fail if fewer than ``min_fraction`` of its tensors match."""
    state = read_state_dict(path)
    own = tower.state_dict()
    mapped, skipped = {}, []
    for key, value in state.items():
        target = _map_key(key, set(own))
        if target is None:
            if not key.startswith(_IGNORED) and not any(f".{i}" in key for i in _IGNORED):
                skipped.append(key)
            continue
        if own[target].shape != value.shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, the tower expects "
                                  f"{tuple(own[target].shape)} at {target} (wrong model size?)")
        mapped[target] = value
    fraction = len(mapped) / max(len(own), 1)
    if fraction < min_fraction:
        raise CheckpointError(f"{path}: only {len(mapped)} of the tower's {len(own)} tensors found "
                              f"({fraction:.0%}); unmatched file keys e.g. {skipped[:4]}")
    tower.load_state_dict(mapped, strict=False)
    log.info("initialised image tower from %s: %d/%d tensors, %d file keys unused", path, len(mapped), len(own),
             len(skipped))
