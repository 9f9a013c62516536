"""How a site's update travels: the new weights in their own dtype (``fp32``), or its change from
the round's global weights rounded to bfloat16 (``bf16-delta``), half the bytes. NumPy has no
bfloat16, so the delta travels as the int16 bit pattern of the bf16 values and the coordinator
adds it back onto the global weights it sent; a delta's rounding error is at most 2⁻⁹ of its own
magnitude, far below a round's change from local training.

Running statistics (BatchNorm means and variances) travel as their values, in their own dtype:
a variance can fall by orders of magnitude in a round, and rounded as a delta it decodes to 0 or
below (on the ODIR sites, 114 of EfficientNet-Lite0's 1280 feature variances were exactly 0 after
one round, and the next round's aggregate gave NaN logits). They are a few thousand numbers.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

ENCODINGS = ("fp32", "bf16-delta")


def encode_bf16_delta(local: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor],
                      statistics: Collection[str] = ()) -> dict[str, np.ndarray]:
    """``{name: int16 bits of bf16(local - global)}`` for floating tensors; ``statistics`` and
    non-floating tensors travel as they are."""
    encoded = {}
    for name, value in local.items():
        if not value.is_floating_point() or name in statistics:
            encoded[name] = value.numpy()
            continue
        delta = value.float() - global_state[name].to(value.device).float()
        encoded[name] = delta.to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return encoded


def decode_bf16_delta(name: str, bits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The weights a site sent over the global ``reference`` array, in the reference's dtype: int16
    ``bits`` are a bf16 delta, an array in the reference's own dtype is the value itself (running
    statistics); a ValueError naming ``name`` when shape or encoding do not fit."""
    if bits.shape == reference.shape and bits.dtype == reference.dtype:
        return bits
    if not np.issubdtype(reference.dtype, np.floating):
        raise ValueError(f"{name!r}: expected {reference.dtype}{list(reference.shape)}, "
                         f"got {bits.dtype}{list(bits.shape)}")
    if bits.dtype != np.int16 or bits.shape != reference.shape:
        raise ValueError(f"{name!r}: expected a bf16 delta (int16{list(reference.shape)}) or the value "
                         f"({reference.dtype}{list(reference.shape)}), got {bits.dtype}{list(bits.shape)}")
    delta = torch.from_numpy(bits.copy()).view(torch.bfloat16).float().numpy()  # copy: writable, keeps 0-d
    return np.asarray(reference.astype(np.float32) + delta, dtype=reference.dtype)  # 0-d stays an array
