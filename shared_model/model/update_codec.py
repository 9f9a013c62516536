"""How a site's update travels (``federation.update_encoding``):

- ``fp32``: the new weights in their own dtype;
- ``bf16-delta``: the change from the round's global weights rounded to bfloat16, half the bytes.
  NumPy has no bfloat16, so the delta travels as the int16 bit pattern of the bf16 values; its
  rounding error is at most 2⁻⁹ of its own magnitude;
- ``int8-delta``: the change quantised to int8 with a symmetric scale per output channel (dim 0
  of a tensor of two or more dimensions) or per tensor (vectors, scalars), about a quarter of the
  bytes: q = round(Δ / s), s = max|Δ| / 127 over the channel, so each coordinate's error is at
  most s / 2. The scales travel beside the weights as float32 arrays named ``NAME/int8-scale``
  (PyTorch names never hold a ``/``). With error feedback (Seide et al. 2014, "1-bit SGD";
  Karimireddy et al. 2019, "Error Feedback Fixes SignSGD") the site adds the previous round's
  quantisation error to its next delta, so the errors do not accumulate over rounds.

The coordinator adds a decoded delta back onto the global weights it sent (:func:`decode_update`).
Running statistics (BatchNorm means and variances) travel as their values, in their own dtype,
under every encoding: a variance can fall by orders of magnitude in a round, and rounded as a
delta it decodes to 0 or below (on the ODIR sites, 114 of EfficientNet-Lite0's 1280 feature
variances were exactly 0 after one round, and the next round's aggregate gave NaN logits).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import torch

ENCODINGS = ("fp32", "bf16-delta", "int8-delta")
DELTA_ENCODINGS = ("bf16-delta", "int8-delta")
SCALE_SUFFIX = "/int8-scale"
INT8_LEVELS = 127


def _channel_max(delta: torch.Tensor) -> torch.Tensor:
    """max|Δ| per output channel (dim 0) for tensors of 2+ dimensions, else over the tensor."""
    if delta.dim() >= 2:
        return delta.abs().flatten(1).amax(dim=1)
    return delta.abs().amax()


def quantise_int8(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)``: int8 ``q`` and float32 scales ``s`` with Δ ≈ q·s (see the module doc)."""
    scale = _channel_max(delta) / INT8_LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an unchanged channel: q = 0
    shaped = scale.reshape(-1, *([1] * (delta.dim() - 1))) if delta.dim() >= 2 else scale
    q = torch.round(delta / shaped).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q, scale.float()


def dequantise_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Δ = q·s, float32."""
    shaped = scale.reshape(-1, *([1] * (q.dim() - 1))) if q.dim() >= 2 else scale
    return q.float() * shaped


def encode_update(encoding: str, local: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor],
                  statistics: Collection[str] = (), residual: Mapping[str, torch.Tensor] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """The arrays a site sends for ``local`` under ``encoding``, and the quantisation error left
    (``int8-delta``; empty otherwise) for error feedback. ``residual``: the error of the previous
    round, added to this round's delta first. ``statistics`` and non-floating tensors travel as
    they are."""
    if encoding not in ENCODINGS:
        raise ValueError(f"update encoding must be one of {ENCODINGS}, got {encoding!r}")
    encoded: dict[str, np.ndarray] = {}
    errors: dict[str, torch.Tensor] = {}
    for name, value in local.items():
        if encoding == "fp32" or not value.is_floating_point() or name in statistics:
            encoded[name] = value.numpy()
            continue
        delta = value.float() - global_state[name].to(value.device).float()
        if encoding == "bf16-delta":
            encoded[name] = delta.to(torch.bfloat16).view(torch.int16).cpu().numpy()
            continue
        if residual is not None and name in residual:
            delta = delta + residual[name].to(delta.device)
        q, scale = quantise_int8(delta)
        errors[name] = (delta - dequantise_int8(q, scale)).cpu()
        encoded[name] = q.cpu().numpy()
        encoded[name + SCALE_SUFFIX] = scale.cpu().numpy()
    return encoded, errors


def _fits(name: str, array: np.ndarray, dtype, shape: tuple[int, ...], what: str) -> None:
    if array.dtype != dtype or array.shape != shape:
        raise ValueError(f"{name!r}: expected {what} ({np.dtype(dtype)}{list(shape)}), "
                         f"got {array.dtype}{list(array.shape)}")


def _decode_one(encoding: str, name: str, arrays: Mapping[str, np.ndarray], reference: np.ndarray) -> np.ndarray:
    sent = arrays[name]
    if sent.shape == reference.shape and sent.dtype == reference.dtype and name + SCALE_SUFFIX not in arrays:
        return sent  # a value: running statistics, non-floating tensors
    if not np.issubdtype(reference.dtype, np.floating):
        _fits(name, sent, reference.dtype, reference.shape, "the value")
    if encoding == "bf16-delta":
        _fits(name, sent, np.int16, reference.shape, f"a bf16 delta or the value {reference.dtype}")
        delta = torch.from_numpy(sent.copy()).view(torch.bfloat16).float()  # copy: writable, keeps 0-d
    else:
        _fits(name, sent, np.int8, reference.shape, f"an int8 delta or the value {reference.dtype}")
        if name + SCALE_SUFFIX not in arrays:
            raise ValueError(f"{name!r}: an int8 delta without its scales ({name + SCALE_SUFFIX!r})")
        scale = arrays[name + SCALE_SUFFIX]
        _fits(name + SCALE_SUFFIX, scale, np.float32, reference.shape[:1] if reference.ndim >= 2 else (), "scales")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"{name + SCALE_SUFFIX!r}: scales must be finite and positive")
        delta = dequantise_int8(torch.from_numpy(sent.copy()), torch.from_numpy(scale.copy()))
    return np.asarray(reference.astype(np.float32) + delta.numpy(), dtype=reference.dtype)  # 0-d stays an array


def weight_names(arrays: Collection[str]) -> list[str]:
    """The names of the weights among a sent update's array names (the int8 scales left out)."""
    return [name for name in arrays if not name.endswith(SCALE_SUFFIX)]


def decode_update(encoding: str, arrays: Mapping[str, np.ndarray],
                  reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights a site sent under a delta ``encoding``, over the global ``reference`` arrays (the
    same :func:`weight_names`; the caller checks them), in the reference's dtypes. A ValueError
    names the first array whose shape, dtype or scales do not fit."""
    if encoding not in DELTA_ENCODINGS:
        raise ValueError(f"{encoding!r} is not a delta encoding ({', '.join(DELTA_ENCODINGS)})")
    stray = sorted(key for key in arrays if key.endswith(SCALE_SUFFIX)
                   and (encoding != "int8-delta" or key.removesuffix(SCALE_SUFFIX) not in reference))
    if stray:
        raise ValueError(f"scales of no int8 weight: {stray[:3]}")
    return {name: _decode_one(encoding, name, arrays, ref) for name, ref in reference.items()}
