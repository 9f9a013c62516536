"""Communication: bytes one site sends per round (the serialized Flower ``ArrayRecord``), for the
whole model in fp32 (every tensor of the state dict, frozen text tower included), the trainable
tensors in fp32 (what RetinaFL sends), their deltas from the global weights in fp32 (same size:
a delta is as wide as a weight), and the deltas in bf16; ratios against the full fp32 model.
bf16 is an encoding measured here, not yet a transport option, so its zero-shot cost after
3 rounds is not measured."""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord

from bench.common import Row
from shared_model.conf import compose_app
from shared_model.model import build_model
from shared_model.model.exchange import exchanged_state_dict


def record_bytes(arrays: dict[str, torch.Tensor]) -> int:
    """Bytes of the serialized arrays, as Flower sends them."""
    record = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in arrays.items()})
    return sum(len(array.data) for array in record.values())


def bf16_bits(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's bf16 encoding as int16 (NumPy has no bfloat16)."""
    return tensor.to(torch.bfloat16).view(torch.int16)


def measure(quick: bool) -> list[Row]:
    rows = []
    for preset in ["tiny"] if quick else ["tiny", "small", "base"]:
        torch.manual_seed(0)
        model = build_model(compose_app("train", [f"model={preset}"]).model)
        full = record_bytes(model.state_dict())
        trainable = exchanged_state_dict(model)
        deltas = {k: v - v.roll(1) for k, v in trainable.items()}  # any values: size depends on shape and dtype only
        encodings = {"full model, fp32": full, "trainable tensors, fp32 (sent today)": record_bytes(trainable),
                     "deltas, fp32": record_bytes(deltas),
                     "deltas, bf16": record_bytes({k: bf16_bits(v) for k, v in deltas.items()})}
        for name, size in encodings.items():
            rows.append(Row("communication", f"{preset}: {name}", f"{size / 2 ** 20:.1f} MiB per site per round",
                            f"{full / 2 ** 20:.1f} MiB full fp32", size / full))
    return rows
