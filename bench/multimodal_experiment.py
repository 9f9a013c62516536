"""The multimodal experiment (docs/multimodal_experiment.md, README table): what each EyeCLIP
objective and the RadCLIP volume adapter add, on the phantom, `tiny` preset, centralized on the
three training sites, equal steps, scored on the held-out site by the common evaluator.

  python -m bench.multimodal_experiment [--steps 300] [--seeds 0 1] [--arms ...]

Objective arms (CFP + central OCT B-scan of every eye): image-text only, + MAE, + cross-modality
(CFP<->OCT of the same eye), all three (EyeCLIP); reported: CFP and OCT zero-shot ACA and
CFP->OCT / OCT->CFP retrieval R@1 / R@5. Volume arms (all three terms, the sites' OCT volumes
added as a second manifest): the slice-attention adapter, the mean of the slice embeddings
(trained through it), and no adapter (a volume trains one random B-scan and is scored on its
central one); reported: volume-level zero-shot ACA. Each arm's result is cached in
``OUT/seedN/<arm>/result.json``, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import run_arms
from shared_model.conf import compose_app

TEXT_ONLY = ["loss.image_image=0", "model.mae.enabled=false"]
ARMS = {
    "image_text": ("image-text only", TEXT_ONLY),
    "image_text_mae": ("+ MAE", ["loss.image_image=0"]),
    "image_text_pairs": ("+ cross-modality", ["model.mae.enabled=false"]),
    "eyeclip": ("all three (EyeCLIP)", []),
    "volume_attention": ("slice attention (RadCLIP)", ["+experiment=volumes", "model.volume_pooling=attention"]),
    "volume_mean": ("mean of slice embeddings", ["+experiment=volumes", "model.volume_pooling=mean"]),
    "volume_central": ("central B-scan, no adapter", ["+experiment=volumes", "model.volume_max_slices=0"]),
}
OBJECTIVE_ARMS = ("image_text", "image_text_mae", "image_text_pairs", "eyeclip")
VOLUME_ARMS = ("volume_attention", "volume_mean", "volume_central")
CFP, OCT, VOLUMES, PAIRS = "heldout/CFP", "heldout/OCT", "volumes/OCT", "heldout/CFP-OCT"


def _summary(results: dict, seconds: float, steps: int) -> dict:
    """What the tables need from the common evaluator's results on the held-out site."""
    zero_shot = results["zero_shot"]
    out = {"cfp": zero_shot[CFP]["aca"], "oct": zero_shot[OCT]["aca"], "seconds": seconds, "steps": steps}
    if VOLUMES in zero_shot:
        out["volume"] = zero_shot[VOLUMES]["aca"]
    pairs = results.get("cross_modal", {}).get(PAIRS)
    if pairs:
        out["retrieval"] = {"cfp_to_oct": pairs["image_to_text"]["recall"],
                            "oct_to_cfp": pairs["text_to_image"]["recall"]}
    return out


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and score one arm (or read its cached result)."""
    from shared_model.train.centralized import run_training

    out = (args.out / f"seed{seed}" / arm).resolve()
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    overrides = ARMS[arm][1]
    experiment = [o for o in overrides if o.startswith("+experiment")] or ["+experiment=demo"]
    cfg = compose_app("train", [*experiment, *[o for o in overrides if not o.startswith("+experiment")],
                                f"train.seed={seed}", f"run_dir={out}", f"train.steps={args.steps}",
                                "train.max_seconds=null", "eval.linear_probe=false", "eval.kshot=[]",
                                f"phantom.root={args.phantom}"])
    start = time.perf_counter()
    results = run_training(cfg, progress=False)
    summary = _summary(results, time.perf_counter() - start, results["meta"]["step"])
    cached.write_text(json.dumps(summary, indent=1))
    return summary


def _cell(runs: list[dict], key) -> str:
    """Mean over seeds, then each seed: ``0.412 (0.40 / 0.42)``."""
    values = [key(r) for r in runs]
    return f"{np.mean(values):.3f} ({' / '.join(f'{v:.2f}' for v in values)})"


def retrieval_ceiling(phantom: str) -> dict[str, float]:
    """Expected R@1 / R@5 of CFP->OCT retrieval for a model that knows an image's label set and
    laterality perfectly and nothing else: the phantom renders the CFP and the OCT of an eye
    independently, so nothing else ties them, and a query's own OCT is a random one among the
    OCTs of its labels and side."""
    from shared_model.data.manifest import load_manifest

    records = load_manifest(Path(phantom) / "heldout" / "manifest.csv").records
    alike: dict[tuple, int] = {}
    for r in records:
        if r.modality == "OCT":
            alike[(r.labels, r.eye)] = alike.get((r.labels, r.eye), 0) + 1
    n = np.array([alike[(r.labels, r.eye)] for r in records if r.modality == "CFP"], dtype=float)
    return {"R@1": float(np.mean(1 / n)), "R@5": float(np.mean(np.minimum(5 / n, 1)))}


def write_doc(args: argparse.Namespace, runs: dict[str, list[dict]]) -> str:
    """docs/multimodal_experiment.md: both tables, means over seeds and each seed."""
    seeds = " ".join(map(str, args.seeds))
    lines = [
        "# Multimodal experiment: EyeCLIP's objectives and the RadCLIP volume adapter (phantom)", "",
        f"{datetime.date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}. `tiny` preset, 64 px, centralized on the phantom's three training sites "
        f"(300 eyes each: a CFP, a central OCT B-scan and a 16-slice OCT volume per eye; the objective arms "
        f"train on the CFPs and B-scans of `manifest.csv`, the volume arms also on `volumes.csv`), {args.steps} "
        "steps of 32 anchors in every arm (a partner image, a volume's slices and the MAE branch come on top), "
        f"seeds {seeds}. Scored on the held-out site (200 eyes of an unseen camera, balanced over 11 "
        "classes: chance ACA 0.091) by the common evaluator: zero-shot ACA with FLAIR prompt ensembles; "
        "retrieval: each held-out CFP retrieves its own eye's OCT B-scan among 200 (and back).", "",
        f"Reproduce: `python -m bench.multimodal_experiment --steps {args.steps} --seeds {seeds}`", "",
        "Cells: mean over seeds (each seed).", ""]
    objective = [a for a in OBJECTIVE_ARMS if a in runs]
    if objective:
        lines += ["## Objectives", "",
                  "| objective | CFP zero-shot ACA | OCT zero-shot ACA | CFP→OCT R@1 | CFP→OCT R@5 | OCT→CFP R@1 "
                  "| OCT→CFP R@5 | s per seed |", "|---|---|---|---|---|---|---|---|"]
        for arm in objective:
            r = runs[arm]
            lines.append(
                f"| {ARMS[arm][0]} | {_cell(r, lambda x: x['cfp'])} | {_cell(r, lambda x: x['oct'])} | "
                + " | ".join(_cell(r, lambda x, d=d, k=k: x["retrieval"][d][k])
                             for d in ("cfp_to_oct", "oct_to_cfp") for k in ("R@1", "R@5"))
                + f" | {np.mean([x['seconds'] for x in r]):.0f} |")
        ceiling = retrieval_ceiling(args.phantom)
        lines += ["", "Retrieval chance: R@1 = 1/200 = 0.005, R@5 = 0.025. The phantom draws an eye's CFP and OCT "
                  "independently, so all they share is the eye's diagnosis and side: a model that knew both "
                  f"perfectly and nothing else would reach R@1 = {ceiling['R@1']:.3f} and R@5 = {ceiling['R@5']:.3f} "
                  "(its own OCT is then a random one of those alike). Real images of one eye share far more "
                  "(vessel pattern, disc shape), so these figures bound what the phantom can show, not the term."]
    volume = [a for a in VOLUME_ARMS if a in runs]
    if volume:
        lines += ["", "## OCT volumes", "",
                  "| volume embedding | volume zero-shot ACA | CFP zero-shot ACA | s per seed |", "|---|---|---|---|"]
        for arm in volume:
            r = runs[arm]
            lines.append(f"| {ARMS[arm][0]} | {_cell(r, lambda x: x['volume'])} | {_cell(r, lambda x: x['cfp'])} "
                         f"| {np.mean([x['seconds'] for x in r]):.0f} |")
    lines += ["", "## Reading", "", *reading(runs, args.steps)]
    text = "\n".join(lines) + "\n"
    args.doc.write_text(text)
    return text


def reading(runs: dict[str, list[dict]], steps: int) -> list[str]:
    """Each arm's difference from its baseline set against the seed-to-seed spread of one arm:
    what the tables can and cannot say."""
    def mean(arm: str, key: str) -> float:
        return float(np.mean([r[key] for r in runs[arm]]))

    def spread(arms: tuple[str, ...], key: str) -> float:
        return max(float(np.ptp([r[key] for r in runs[a]])) for a in arms if a in runs)

    out = []
    for arms, base, key, what in ((OBJECTIVE_ARMS, "image_text", "cfp", "CFP zero-shot ACA"),
                                  (OBJECTIVE_ARMS, "image_text", "oct", "OCT zero-shot ACA"),
                                  (VOLUME_ARMS, "volume_central", "volume", "volume zero-shot ACA")):
        present = [a for a in arms if a in runs and a != base]
        if base not in runs or not present:
            continue
        diffs = ", ".join(f"{ARMS[a][0]} {mean(a, key) - mean(base, key):+.3f}" for a in present)
        noise = spread(arms, key)
        biggest = max(abs(mean(a, key) - mean(base, key)) for a in present)
        verdict = ("no difference exceeds the spread between two seeds of one arm, so at this budget none is "
                   "distinguishable from seed noise" if biggest <= noise else
                   "the largest difference exceeds the spread between two seeds of one arm")
        out.append(f"- {what} against {ARMS[base][0]}: {diffs}; largest seed-to-seed spread of one arm "
                   f"{noise:.3f}: {verdict} ({steps} steps).")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--phantom", default="data/phantom")
    parser.add_argument("--out", type=Path, default=Path("runs/multimodal_experiment"))
    parser.add_argument("--doc", type=Path, default=Path("docs/multimodal_experiment.md"))
    args = parser.parse_args()
    print(write_doc(args, run_arms(args.arms, args.seeds, lambda arm, seed: run_arm(arm, seed, args))))


if __name__ == "__main__":
    main()
