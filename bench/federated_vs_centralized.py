"""The README's federation experiment: zero-shot ACA on the held-out phantom site for
(a) centralized training on the pooled data of 4 sites, (b) FedAvg over the 4 sites, (c) each
site alone, under a fixed compute budget counted in training steps of 32 images.

  python bench/federated_vs_centralized.py [--site-steps 300] [--rounds 5] [--model tiny] [--seeds 0 1]

The budget is ``site-steps`` per hospital: a site alone trains that many steps; in FedAvg every
site trains that many steps in total (``rounds`` rounds of ``site-steps / rounds`` local steps);
centralized training on the pooled data gets the federation's total, 4 x ``site-steps``. So
FedAvg is compared with each single site at equal compute per hospital, and with centralized
training at equal total compute. Writes ``docs/federated_experiment.md`` with the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from shared_model.conf import compose_app

SITES = 4
TASK = "heldout/CFP"


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Every arm with ``train.seed=seed``; results cached in ``OUT/seedN/results.json``."""
    from server.simulation import run_simulation
    from shared_model.train.centralized import run_training

    out = args.out / f"seed{seed}"
    cached = out / "results.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    local_steps = args.site_steps // args.rounds
    phantom = args.out / "phantom"
    common = [f"model={args.model}", f"phantom.root={phantom}", f"phantom.sites={SITES}", f"train.seed={seed}",
              "data.text_source=caption", "eval.linear_probe=false", "eval.kshot=[]",
              "eval.retrieval=false", "train.warmup_steps=10", "train.lr=1e-3"]
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}

    def central(name: str, manifests: str, steps: int) -> None:
        start = time.perf_counter()
        cfg = compose_app("train", [*common, f"train.steps={steps}", f"run_dir={out / name}",
                                    f"data.manifests=[{manifests}]"])
        results[name] = run_training(cfg, progress=False)["zero_shot"][TASK]
        timings[name] = time.perf_counter() - start

    central("centralized", f"{phantom}/site_*/manifest.csv", SITES * args.site_steps)
    start = time.perf_counter()
    fed_cfg = compose_app("federation", [*common, f"train.steps={local_steps}", f"federation.rounds={args.rounds}",
                                     f"federation.min_sites={SITES}", f"federation.min_available={SITES}",
                                     f"run_dir={out / 'fedavg'}", "strategy.fraction_evaluate=0",
                                     f"federation.evaluate_every={args.rounds}"])
    results["fedavg"] = run_simulation(fed_cfg)[-1]["server_eval"][TASK]
    timings["fedavg"] = time.perf_counter() - start
    for k in range(SITES):
        central(f"site_{k} alone", f"{phantom}/site_{k}/manifest.csv", args.site_steps)
    payload = {"results": results, "timings": timings}
    cached.write_text(json.dumps(payload, indent=2))
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-steps", type=int, default=300, help="training steps each hospital spends")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="training seeds; arms are averaged over them")
    parser.add_argument("--out", type=Path, default=Path("runs/experiment"))
    parser.add_argument("--report", type=Path, default=Path("docs/federated_experiment.md"))
    args = parser.parse_args()
    runs = {seed: run_seed(args, seed) for seed in args.seeds}
    arms = list(next(iter(runs.values()))["results"])
    mean = {arm: sum(r["results"][arm]["aca"] for r in runs.values()) / len(runs) for arm in arms}
    singles = [arm for arm in arms if arm.endswith("alone")]
    best_single = max(mean[arm] for arm in singles)
    seeds = " ".join(str(s) for s in args.seeds)
    lines = [
        "# Federated vs centralized vs single sites (phantom, held-out site)", "",
        f"{datetime.date.today()}, {platform.machine()} CPU ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, "
        f"`{args.model}` preset, {SITES} phantom sites with camera and label shift, held-out site of its own camera.",
        f"Budget: {args.site_steps} steps of 32 images per hospital. Site alone: {args.site_steps} steps; FedAvg: "
        f"{args.rounds} rounds x {args.site_steps // args.rounds} local steps at each of {SITES} sites; centralized "
        f"(pooled data): {SITES * args.site_steps} steps, the federation's total. Training seeds: {seeds}.", "",
        f"Reproduce: `python bench/federated_vs_centralized.py --site-steps {args.site_steps} --rounds {args.rounds} "
        f"--model {args.model} --seeds {seeds}`", "",
        f"| arm | {TASK} zero-shot ACA, mean | per seed | AUC per seed | wall time per seed (s) |",
        "|---|---|---|---|---|",
    ]
    for arm in arms:
        per_seed = " / ".join(f"{r['results'][arm]['aca']:.3f}" for r in runs.values())
        auc = " / ".join(f"{r['results'][arm]['auc']:.3f}" for r in runs.values())
        wall = " / ".join(f"{r['timings'][arm]:.0f}" for r in runs.values())
        lines.append(f"| {arm} | {mean[arm]:.3f} | {per_seed} | {auc} | {wall} |")
    lines += ["", f"Means: FedAvg / centralized = {mean['fedavg'] / mean['centralized']:.2f} (target >= 0.9); FedAvg "
              f"{'above' if mean['fedavg'] > best_single else 'not above'} every single site (best single site "
              f"{best_single:.3f}). Chance ACA = 1/11 = 0.091."]
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
