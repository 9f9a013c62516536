"""Simulation overhead: wall time of ``retina-sim`` (local SuperLink, Flower's simulation engine,
one ClientApp per site, aggregation, checkpoints; evaluation off) for S sites x R rounds, against
the same local training rounds run back to back in one plain Python loop: the foundation task's
``train_site`` (``shared_model/federated/foundation.py``) for every site and round, what the
ClientApp calls."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, check
from shared_model.conf import compose_app
from shared_model.data.embedded import ensure_phantom
from shared_model.data.sites import simulated_site_manifests
from shared_model.federated.foundation import FoundationTask
from shared_model.federated.site import Site
from shared_model.model import build_model
from shared_model.model.exchange import exchanged_state_dict
from shared_model.runtime import seed_everything

TARGET = "<= 1.25"


def overrides(root: Path, sites: int, rounds: int, steps: int) -> list[str]:
    return [f"phantom.root={root / 'phantom'}", f"phantom.sites={sites}", "phantom.images_per_site=64",
            "phantom.heldout_images=22", f"federation.rounds={rounds}", f"federation.min_sites={sites}",
            f"federation.min_available={sites}", f"train.steps={steps}", "train.batch_size=16", "train.warmup_steps=1",
            "data.num_workers=0", "eval=none", "strategy.fraction_evaluate=0", "report.html=false",
            f"run_dir={root / 'sim'}"]


def plain_loop(args: list[str], root: Path) -> float:
    """Seconds of every site's every round of local training, one after the other, in-process."""
    cfg = compose_app("federation", args)
    ensure_phantom(cfg.phantom, progress=False)
    seed_everything(0)
    global_state = exchanged_state_dict(build_model(cfg.model))
    sites = [Site(f"site_{k}", m, root / "loop" / f"site_{k}", cfg.train.device)
             for k, m in enumerate(simulated_site_manifests(cfg))]
    start = time.perf_counter()
    for server_round in range(1, cfg.federation.rounds + 1):
        for site in sites:
            FoundationTask().train_site(cfg, site, global_state, server_round, {})
    return time.perf_counter() - start


def measure(quick: bool) -> list[Row]:
    sites, rounds, steps = (2, 1, 2) if quick else (3, 3, 150)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args = overrides(root, sites, rounds, steps)
        loop = plain_loop(args, root)
        start = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).parent / "retina-sim"), *args], capture_output=True, text=True)
        sim = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"retina-sim failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    ratio = sim / loop
    return [Row("simulation overhead", f"{sites} sites x {rounds} rounds x {steps} steps, tiny",
                f"{sim:.1f} s retina-sim", f"{loop:.1f} s plain loop", ratio, TARGET, check(ratio, TARGET),
                f"{sim - loop:.0f} s more per run: processes, SuperLink, Ray actors, messages, aggregation")]
