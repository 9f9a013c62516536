"""Communication: bytes one site sends per round (the serialized Flower ``ArrayRecord``), for the
whole model in fp32 (every tensor of the state dict, frozen text tower included), the trainable
tensors in fp32 (what RetinaFL sends with ``federation.update_encoding=fp32``), their deltas from
the global weights in fp32 (same size: a delta is as wide as a weight), in bf16 (``bf16-delta``)
and in int8 with per-channel scales (``int8-delta``, target <= 0.27x the fp32 update), encoded by
``shared_model/model/update_codec.py``; ratios against the full fp32 model. Then the zero-shot
cost of each delta encoding: the same 3-round ``retina-sim`` federation (same seeds) with fp32,
bf16-delta and int8-delta updates, held-out ACA of the last aggregate compared with twice its
standard error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord

from bench.common import Row
from shared_model.conf import compose_app
from shared_model.model import build_model
from shared_model.model.exchange import exchanged_state_dict, exchanged_statistics
from shared_model.model.update_codec import encode_update


def record_bytes(arrays: dict[str, torch.Tensor]) -> int:
    """Bytes of the serialized arrays, as Flower sends them."""
    record = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in arrays.items()})
    return sum(len(array.data) for array in record.values())


def encoded_bytes(encoding: str, local: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor]) -> int:
    """Bytes of an update as the site sends it under ``encoding``."""
    encoded, _ = encode_update(encoding, local, global_state)
    return record_bytes({k: torch.from_numpy(v) for k, v in encoded.items()})


def measure(quick: bool) -> list[Row]:
    rows = []
    for preset in ["tiny"] if quick else ["tiny", "small", "base"]:
        torch.manual_seed(0)
        model = build_model(compose_app("train", [f"model={preset}"]).model)
        full = record_bytes(model.state_dict())
        trainable = exchanged_state_dict(model)
        moved = {k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in trainable.items()}
        statistics = exchanged_statistics(model)
        fp32 = record_bytes(trainable)
        encodings = {"full model, fp32": full, "trainable tensors, fp32 (fp32 updates)": fp32,
                     "deltas, fp32": record_bytes({k: v - trainable[k] for k, v in moved.items()}),
                     "deltas, bf16 (bf16-delta)": encoded_bytes("bf16-delta", moved, trainable),
                     "deltas, int8 per channel (int8-delta)": encoded_bytes("int8-delta", moved, trainable)}
        for name, size in encodings.items():
            rows.append(Row("communication", f"{preset}: {name}", f"{size / 2 ** 20:.1f} MiB per site per round",
                            f"{full / 2 ** 20:.1f} MiB full fp32", size / full))
        int8 = encodings["deltas, int8 per channel (int8-delta)"]
        rows.append(Row("communication", f"{preset}: int8-delta vs fp32 update", f"{int8 / 2 ** 20:.1f} MiB",
                        f"{fp32 / 2 ** 20:.1f} MiB fp32 update", int8 / fp32, "<= 0.27", int8 / fp32 <= 0.27,
                        f"{len(statistics)} running statistics travel as values"))
    if not quick:
        rows += delta_aca_cost()
    return rows


def _final_aca(root: Path, encoding: str) -> tuple[float, int, int]:
    """Held-out CFP zero-shot ACA of the last aggregate, its number of images, MiB received in round 1."""
    run = root / encoding
    done = subprocess.run([str(Path(sys.executable).parent / "retina-sim"), f"phantom.root={root / 'phantom'}",
                           "phantom.sites=3", "phantom.images_per_site=120", "phantom.heldout_images=200",
                           "federation.rounds=3", "train.steps=40", "data.num_workers=0", "eval.linear_probe=false",
                           "eval.retrieval=false", "eval.kshot=[]", "strategy.fraction_evaluate=0", "report.html=false",
                           f"federation.update_encoding={encoding}", f"run_dir={run}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"retina-sim failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    n = json.loads((run / "eval" / "metrics.json").read_text())["zero_shot"]["heldout/CFP"]["n"]
    return records[-1]["server_eval"]["heldout/CFP"]["aca"], n, records[0]["bytes_received"]


def delta_aca_cost() -> list[Row]:
    """Held-out ACA of the bf16-delta and int8-delta federations against the fp32 one."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32, n, fp32_bytes = _final_aca(Path(tmp), "fp32")
        se = math.sqrt(max(fp32 * (1 - fp32), 1e-4) / n)
        for encoding in ("bf16-delta", "int8-delta"):
            aca, _, received = _final_aca(Path(tmp), encoding)
            rows.append(Row("communication", f"{encoding} vs fp32 updates: held-out ACA after 3 rounds (3 sites, tiny)",
                            f"ACA {aca:.3f}, {received / 2 ** 20:.1f} MiB received",
                            f"ACA {fp32:.3f}, {fp32_bytes / 2 ** 20:.1f} MiB",
                            aca / fp32 if fp32 else float("nan"), f"|Δ| <= 2 SE ({2 * se:.3f})",
                            abs(aca - fp32) <= 2 * se, f"{n} held-out images"))
    return rows
