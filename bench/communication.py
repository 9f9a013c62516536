"""Communication: bytes one site sends per round (the serialized Flower ``ArrayRecord``), for the
whole model in fp32 (every tensor of the state dict, frozen text tower included), the trainable
tensors in fp32 (what RetinaFL sends), their deltas from the global weights in fp32 (same size:
a delta is as wide as a weight), and the deltas in bf16 (``federation.update_encoding=bf16-delta``);
ratios against the full fp32 model. Then the zero-shot cost of bf16 transfer: the same 3-round
``retina-sim`` federation (same seeds) with fp32 and with bf16-delta updates, held-out ACA of the
last aggregate compared with twice its standard error (none expected within noise)."""

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
    if not quick:
        rows.append(bf16_aca_cost())
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


def bf16_aca_cost() -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        fp32, n, fp32_bytes = _final_aca(Path(tmp), "fp32")
        bf16, _, bf16_bytes = _final_aca(Path(tmp), "bf16-delta")
    se = math.sqrt(max(fp32 * (1 - fp32), 1e-4) / n)
    return Row("communication", "bf16-delta vs fp32 updates: held-out ACA after 3 rounds (3 sites, tiny)",
               f"ACA {bf16:.3f}, {bf16_bytes / 2 ** 20:.1f} MiB received",
               f"ACA {fp32:.3f}, {fp32_bytes / 2 ** 20:.1f} MiB",
               bf16 / fp32 if fp32 else float("nan"), f"|Δ| <= 2 SE ({2 * se:.3f})", abs(bf16 - fp32) <= 2 * se,
               f"{n} held-out images")
