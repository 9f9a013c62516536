"""The README's federation experiment: zero-shot ACA on the held-out phantom site for
(a) centralized training on the pooled data of 4 sites, (b) FedAvg over the 4 sites, (c) each
site alone, under a fixed compute budget counted in training steps of 32 images.

  python bench/federated_vs_centralized.py [--site-steps 300] [--rounds 5] [--model tiny] [--out runs/experiment]

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

from shared_model.conf import CONFIG_MODULE, register_configs

SITES = 4
TASK = "heldout/CFP"


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return OmegaConf.to_object(hydra_compose(name, overrides=overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-steps", type=int, default=300, help="training steps each hospital spends")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/experiment"))
    parser.add_argument("--report", type=Path, default=Path("docs/federated_experiment.md"))
    args = parser.parse_args()
    from server.simulation import run_simulation
    from shared_model.train.centralized import run_training

    local_steps = args.site_steps // args.rounds
    common = [f"model={args.model}", f"phantom.root={args.out / 'phantom'}", f"phantom.sites={SITES}",
              "data.text_source=caption", "data.pair_modalities=false", "eval.linear_probe=false", "eval.kshot=[]",
              "eval.retrieval=false", "train.warmup_steps=10", "train.lr=1e-3"]
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}

    def central(name: str, manifests: str, steps: int) -> None:
        start = time.perf_counter()
        cfg = compose("train", [*common, f"train.steps={steps}", f"run_dir={args.out / name}",
                                f"data.manifests=[{manifests}]"])
        out = run_training(cfg, progress=False)
        results[name] = out["zero_shot"][TASK]
        timings[name] = time.perf_counter() - start

    central("centralized", f"{args.out / 'phantom'}/site_*/manifest.csv", SITES * args.site_steps)
    start = time.perf_counter()
    fed_cfg = compose("federation", [*common, f"train.steps={local_steps}", f"federation.rounds={args.rounds}",
                                     f"federation.min_sites={SITES}", f"federation.min_available={SITES}",
                                     f"run_dir={args.out / 'fedavg'}", "strategy.fraction_evaluate=0",
                                     f"federation.evaluate_every={args.rounds}"])
    records = run_simulation(fed_cfg)
    results["fedavg"] = records[-1]["server_eval"][TASK]
    timings["fedavg"] = time.perf_counter() - start
    for k in range(SITES):
        central(f"site_{k} alone", f"{args.out / 'phantom'}/site_{k}/manifest.csv", args.site_steps)

    (args.out / "results.json").write_text(json.dumps({"results": results, "timings": timings}, indent=2))
    best_site = max(results[f"site_{k} alone"]["aca"] for k in range(SITES))
    ratio = results["fedavg"]["aca"] / results["centralized"]["aca"]
    lines = [
        "# Federated vs centralized vs single sites (phantom, held-out site)", "",
        f"{datetime.date.today()}, {platform.machine()} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"`{args.model}` preset, {SITES} phantom sites with camera and label shift, held-out site of its own camera.",
        f"Budget: {args.site_steps} steps of 32 images per hospital. Site alone: {args.site_steps} steps; FedAvg: "
        f"{args.rounds} rounds x {local_steps} local steps at each of {SITES} sites; centralized (pooled data): "
        f"{SITES * args.site_steps} steps, the federation's total.", "",
        f"Reproduce: `python bench/federated_vs_centralized.py --site-steps {args.site_steps} --rounds {args.rounds} "
        f"--model {args.model}`",
        "", f"| arm | {TASK} zero-shot ACA | AUC | wall time (s) |", "|---|---|---|---|",
    ]
    for name, metrics in results.items():
        lines.append(f"| {name} | {metrics['aca']:.3f} | {metrics['auc']:.3f} | {timings[name]:.0f} |")
    lines += ["", f"FedAvg / centralized = {ratio:.2f} (target >= 0.9); FedAvg {'above' if results['fedavg']['aca'] > best_site else 'not above'} "
              f"every single site (best single site {best_site:.3f}). Chance ACA = 1/11 = 0.091."]
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
