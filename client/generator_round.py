"""One site's round when the federation trains the synthetic-corpus generator (``task=generator``):
load the site's images, start from the round's global generator weights, take ``train.steps``
diffusion steps with the synthetic module's trainer (DP-SGD under ``privacy.mode=dp-sgd``, with
the same ledger and budget rules as the foundation model), and return the weights. The optimizer,
schedule and RNG continue across rounds from ``state_dir/generator``; no image leaves the site."""

from __future__ import annotations

from dataclasses import replace

import torch

from shared_model.config import FederationAppConfig, SynthAppConfig, SynthTrainConfig
from shared_model.model.exchange import load_exchanged_state_dict
from shared_model.train.centralized import load_training_records
from client.site_training import Expected, RoundResult, Site, budget_stop, open_privacy, site_seed
from synthetic.dataset import GeneratorDataset
from synthetic.generator import federated_generator
from synthetic.training import STATE_FILE, GeneratorTrainer


def train_generator_round(app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                          server_round: int, expected: Expected = Expected()) -> RoundResult:
    """``app.train.steps`` generator steps from ``global_state``; the new weights and metrics."""
    records = load_training_records(replace(app.data, manifests=list(site.manifests)))
    model = federated_generator(app.generator, app.privacy.mode == "dp-sgd")
    expected.check(site.name, model)
    load_exchanged_state_dict(model, global_state)
    total_steps = app.federation.rounds * app.train.steps
    session = open_privacy(app, site, model, records, total_steps)
    if session is not None and not session.allows(app.train.steps):
        return budget_stop(model, session, server_round)
    synth = SynthAppConfig(generator=app.generator, data=app.data, privacy=app.privacy, train=SynthTrainConfig(
        steps=total_steps, batch_size=app.train.batch_size, lr=app.train.lr, warmup_steps=app.train.warmup_steps,
        device=site.device, seed=site_seed(app.train.seed, site.name, 1), num_workers=app.data.num_workers))
    trainer = GeneratorTrainer(model, synth, GeneratorDataset(records, app.generator.image_size, model.conditioning),
                               session)
    folder = site.state_dir / "generator"
    if (folder / STATE_FILE).is_file():
        trainer.load_state(folder)
    stats = trainer.run(app.train.steps, progress=False)
    metrics = {"num-examples": len(records), "site-weight": 1.0, "server-round": server_round, "steps": stats.steps,
               "seconds": round(stats.seconds, 3), "skipped-images": stats.skipped}
    privacy: dict = {"mode": "none"}
    if session is not None:
        metrics["epsilon"] = session.record(stats.steps, {"round": server_round})
        privacy = session.describe()
    else:
        metrics["loss.diffusion"] = stats.loss
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_state(folder)
    return RoundResult.of(model, metrics, privacy)
