"""The real-data experiment (docs/real_data_experiment.md, README table): on the three real ODIR
hospital sites of ``shared/data/odir_sites``, at equal compute, FedAvg vs centralized training on
the pooled data vs each site alone, a DP-SGD federation (patient unit, ε <= 8 per site over the
whole run), bf16-delta and int8-delta federations, and the frozen ImageNet tower with no training; every arm
scored on ``val.csv`` (patients at no site) by the common evaluator.

  python -m bench.real_data_experiment [--site-steps 500] [--rounds 5] [--seeds 0 1] [--arms ...]

The budget is ``site-steps`` steps of 32 images per hospital: a site alone trains that many; in
a federation every site trains that many in total (``rounds`` rounds); centralized training gets
the federation's total, 3 x ``site-steps``. Every arm uses the recipe of docs/real_data.md
(``+experiment=real`` / ``real_federation``). Each arm's result is cached in
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

SITES = 3
TASK = "odir_val/CFP"
ARMS = ("fedavg", "centralized", "site0", "site1", "site2", "fedavg_dp", "fedavg_bf16", "fedavg_int8",
        "frozen_imagenet")
LABELS = {"fedavg": "FedAvg, 3 sites", "centralized": "centralized (pooled data)", "site0": "site 0 alone",
          "site1": "site 1 alone", "site2": "site 2 alone", "fedavg_dp": "FedAvg + DP-SGD (patient, ε ≤ 8)",
          "fedavg_bf16": "FedAvg, bf16-delta updates", "fedavg_int8": "FedAvg, int8-delta updates",
          "frozen_imagenet": "frozen ImageNet tower, no training"}
# Its projections are untrained, so its zero-shot figures mean nothing: only its probes are shown.
NO_ZERO_SHOT = {"frozen_imagenet"}
# The federated arms: their experiment config and what they change on top of it.
FEDERATIONS = {"fedavg": ("real_federation", []), "fedavg_dp": ("real_federation_dp", []),
               "fedavg_bf16": ("real_federation", ["federation.update_encoding=bf16-delta"]),
               "fedavg_int8": ("real_federation", ["federation.update_encoding=int8-delta"])}


def _summary(results: dict, seconds: float) -> dict:
    """What the tables need from the common evaluator's results on val.csv."""
    zero_shot = results["zero_shot"][TASK]
    return {"zero_shot": {k: zero_shot[k] for k in ("aca", "auc", "macro_f1", "per_class_recall", "class_names")},
            "probe": results["linear_probe"][TASK]["mean"]["aca"],
            "probe_std": results["linear_probe"][TASK]["std"]["aca"],
            "probe_features": results["linear_probe_features"][TASK]["mean"]["aca"],
            "seconds": seconds}


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and score one arm (or read its cached result)."""
    from server.simulation import run_simulation
    from shared_model.eval.evaluate import evaluate_model
    from shared_model.model import build_model
    from shared_model.runtime import resolve_device
    from shared_model.train.centralized import run_training

    out = (args.out / f"seed{seed}" / arm).resolve()
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    common = [f"train.seed={seed}", f"run_dir={out}"]
    start = time.perf_counter()
    if arm == "frozen_imagenet":
        cfg = compose_app("train", ["+experiment=real", *common])
        results = evaluate_model(build_model(cfg.model), cfg.eval, cfg.model.image.image_size, resolve_device("auto"))
    elif arm == "centralized":
        results = run_training(compose_app("train", ["+experiment=real", *common,
                                                     f"train.steps={SITES * args.site_steps}"]), progress=False)
    elif arm.startswith("site"):
        manifest = compose_app("train", ["+experiment=real"]).data.manifests[int(arm.removeprefix("site"))]
        results = run_training(compose_app("train", ["+experiment=real", *common, f"data.manifests=[{manifest}]",
                                                     f"train.steps={args.site_steps}"]), progress=False)
    else:
        experiment, extra = FEDERATIONS[arm]
        cfg = compose_app("federation", [f"+experiment={experiment}", *common, *extra,
                                         f"federation.rounds={args.rounds}",
                                         f"train.steps={args.site_steps // args.rounds}"])
        run_simulation(cfg)
        results = json.loads((out / "eval" / "metrics.json").read_text())
    summary = _summary(results, time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(summary, indent=1))
    return summary


def _mean(runs: list[dict], key) -> float:
    return float(np.mean([key(r) for r in runs]))


def write_doc(args: argparse.Namespace, runs: dict[str, list[dict]]) -> str:
    """docs/real_data_experiment.md: the arms' means over seeds, per seed, per class, timings."""
    seeds = " ".join(map(str, args.seeds))
    zs = {arm: _mean(r, lambda x: x["zero_shot"]["aca"]) for arm, r in runs.items()}
    probe = {arm: _mean(r, lambda x: x["probe"]) for arm, r in runs.items()}
    lines = [
        "# Real fundus photographs: federated vs centralized vs single sites (ODIR-5K, val.csv)", "",
        f"{datetime.date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}. Data: `shared/data/odir_sites` (three sites of 1,572 / 1,497 / 1,423 eyes; "
        "SOURCE.md there); every figure on `val.csv`: 140 eyes of patients at no site, 20 per class of 7, "
        "so chance ACA is 0.143 and one seed's ACA has a standard error of about 0.04.",
        f"Budget: {args.site_steps} steps of 32 images per hospital. A site alone: {args.site_steps} steps; "
        f"FedAvg: {args.rounds} rounds x {args.site_steps // args.rounds} local steps at each of {SITES} sites; "
        f"centralized (pooled data): {SITES * args.site_steps} steps, the federation's total. Recipe: "
        "docs/real_data.md (`model=efficientnet_lite0`, 128 px). DP-SGD arm: `+experiment=real_federation_dp` "
        "(patient unit, ε budget 8 per site over the run including the release of the image-feature centre, "
        "noise calibrated to spend it; public prompt-bank contrast instead of in-batch contrast; frozen tower, "
        "trained projections; no class rebalancing, which Poisson sampling forbids). Expected batch: 32 "
        f"patients, about 55 images. Training seeds: {seeds}.", "",
        f"Reproduce: `python -m bench.real_data_experiment --site-steps {args.site_steps} --rounds {args.rounds} "
        f"--seeds {seeds}`", "",
        "Zero-shot: FLAIR prompt ensembles of the 7 classes; linear probe: FLAIR's class-balanced logistic "
        "regression, 5 folds grouped by patient, on the 256-d image embeddings (and, for comparison with an "
        "untrained tower, on the tower's 1280-d pooled features).", "",
        "| arm | zero-shot ACA | per seed | zero-shot AUC | linear-probe ACA | per seed | probe on tower "
        "features | wall time per seed (s) |", "|---|---|---|---|---|---|---|---|",
    ]
    def per_seed(r: list[dict], key, fmt: str = ".3f") -> str:
        return " / ".join(format(key(x), fmt) for x in r)

    for arm, r in runs.items():
        zero_shot = (f"{zs[arm]:.3f} | {per_seed(r, lambda x: x['zero_shot']['aca'])} | "
                     f"{_mean(r, lambda x: x['zero_shot']['auc']):.3f}") if arm not in NO_ZERO_SHOT else "– | – | –"
        lines.append(
            f"| {LABELS[arm]} | {zero_shot} | {probe[arm]:.3f} | {per_seed(r, lambda x: x['probe'])} | "
            f"{_mean(r, lambda x: x['probe_features']):.3f} | {per_seed(r, lambda x: x['seconds'], '.0f')} |")
    classes = next(iter(runs.values()))[0]["zero_shot"]["class_names"]
    lines += ["", "Zero-shot recall per class, mean over seeds:", "",
              "| arm | " + " | ".join(c.replace("_", " ") for c in classes) + " |",
              "|---|" + "---|" * len(classes)]
    for arm, r in runs.items():
        if arm in NO_ZERO_SHOT:
            continue
        recall = np.mean([x["zero_shot"]["per_class_recall"] for x in r], axis=0)
        lines.append(f"| {LABELS[arm]} | " + " | ".join(f"{v:.2f}" for v in recall) + " |")
    if {"fedavg", "frozen_imagenet"} <= set(runs):
        lines += ["", f"FedAvg zero-shot ACA {zs['fedavg']:.3f} (bar >= 0.50), linear probe {probe['fedavg']:.3f} "
                  f"(bar >= 0.60); the frozen ImageNet tower's own features probe at "
                  f"{_mean(runs['frozen_imagenet'], lambda x: x['probe_features']):.3f}."]
    if {"fedavg", "centralized", "site0", "site1", "site2"} <= set(runs):
        best_single = max(zs[f"site{k}"] for k in range(SITES))
        lines += [f"FedAvg / centralized zero-shot ACA = {zs['fedavg'] / zs['centralized']:.2f} (bar >= 0.95); "
                  f"FedAvg {'above' if zs['fedavg'] > best_single else 'NOT above'} every single site (best "
                  f"{best_single:.3f})."]
    if {"fedavg", "fedavg_dp"} <= set(runs):
        lines.append(f"DP-SGD / FedAvg zero-shot ACA = {zs['fedavg_dp'] / zs['fedavg']:.2f} (bar >= 0.8).")
    text = "\n".join(lines) + "\n"
    args.doc.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-steps", type=int, default=500, help="training steps of 32 images per hospital")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--out", type=Path, default=Path("runs/real_experiment"))
    parser.add_argument("--doc", type=Path, default=Path("docs/real_data_experiment.md"))
    args = parser.parse_args()
    print(write_doc(args, run_arms(args.arms, args.seeds, lambda arm, seed: run_arm(arm, seed, args))))


if __name__ == "__main__":
    main()
