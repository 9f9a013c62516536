"""What a site's update must be before anything of it is added to the aggregate: exactly the
global model's weight names, each array with the global array's shape and dtype (read from the
array's own .npy header, never from metadata the site could set apart from its bytes), plain
numbers (nothing unpickled) and finite. An array of the wrong shape would otherwise be
broadcast into every element of the aggregate: a ``(1,)`` array where the model has ``(3, 4)``
moves all twelve weights.

The checks are the same for every update encoding: plain weights are screened as they arrive,
bf16 deltas once decoded over the global weights (:mod:`shared_model.model.update_codec`), and
SecAgg+ masked vectors, which only carry the shapes (their values are masked), before they are
summed (:mod:`server.secure_aggregation`)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord
from flwr.common import bytes_to_ndarray

from server.streaming_mean import array_view

SHOWN = 3  # names quoted in a reason; the rest are counted


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def names_mismatch(names: Iterable[str], expected: Iterable[str]) -> str | None:
    """Why ``names`` are not the global model's weight names (extra and missing ones named), or None."""
    names, expected = set(names), set(expected)
    extra, missing = sorted(names - expected), sorted(expected - names)
    parts = ([f"unknown weight {_few(extra)}"] if extra else []) + ([f"missing {_few(missing)}"] if missing else [])
    return "weight names differ from the global model: " + "; ".join(parts) if parts else None


def layout(shape: tuple[int, ...], dtype: np.dtype) -> str:
    """``float32[3, 4]``: how a reason shows an array."""
    return f"{dtype}{list(shape)}"


def update_mismatch(arrays: ArrayRecord | None, reference: ArrayRecord) -> str | None:
    """The first reason ``arrays`` cannot be added to the global ``reference`` weights, or None."""
    if arrays is None:
        return "no weights in the reply"
    reason = names_mismatch(arrays.keys(), reference.keys())
    if reason:
        return reason
    for key, array in arrays.items():
        expected = array_view(reference[key])
        try:  # the .npy header is parsed, nothing is unpickled: an object array is refused here
            view = array_view(array)
        except (ValueError, TypeError) as exc:
            return f"{key!r} cannot be decoded as a plain array ({exc})"
        if view.shape != expected.shape or view.dtype != expected.dtype:
            return (f"{key!r} is {layout(view.shape, view.dtype)}, the global model's is "
                    f"{layout(expected.shape, expected.dtype)}")
        if view.dtype.kind in "fc" and not np.isfinite(view).all():
            return f"non-finite values in {key!r}"
    return None


def masked_mismatch(vector: list[bytes], reference: ArrayRecord, modulus: int) -> str | None:
    """The first reason a SecAgg+ masked vector cannot be summed with the others, or None. Its
    values are masked, but its layout is not: the weight entry ``(1,)``, then one integer array
    per global weight in the global model's order and shape, every value in ``[0, modulus)``."""
    expected = [("its weight", (1,))] + [(repr(key), array_view(a).shape) for key, a in reference.items()]
    if not vector:
        return "no masked vector in the reply"
    if len(vector) != len(expected):
        return f"masked vector holds {len(vector) - 1} weight arrays, the global model {len(expected) - 1}"
    for raw, (name, shape) in zip(vector, expected):
        try:
            array = bytes_to_ndarray(raw)  # np.load with allow_pickle=False
        except (ValueError, TypeError, EOFError, OSError) as exc:
            return f"masked {name} cannot be decoded as a plain array ({exc})"
        if array.shape != shape or array.dtype.kind not in "iu":
            return f"masked {name} is {layout(array.shape, array.dtype)}, expected integers{list(shape)}"
        if array.size and (array.min() < 0 or array.max() >= modulus):
            return f"masked {name} has values outside [0, {modulus}) (secagg.modulus_range)"
    return None
