"""The synthetic-corpus generator's federated task (``task=generator``): at each site, load the
site's images, start from the round's global generator weights, take ``train.steps`` diffusion
steps with the synthetic module's trainer (DP-SGD under ``privacy.mode=dp-sgd``, with the same
ledger and budget rules as the foundation model) and return the weights; at the coordinator,
write each round as a generator folder (``retina-synth sample`` reads it) carrying the largest ε
any site reported. The optimizer, schedule and RNG continue across rounds from
``state_dir/generator``; no image leaves the site. There is no zero-shot evaluation of a generator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from shared_model import wire
from shared_model.config import FederationAppConfig, SynthAppConfig, SynthTrainConfig
from shared_model.data.manifest import load_training_records
from shared_model.federated.site import Expected, RoundResult, Site, budget_stop, open_privacy, site_seed
from shared_model.federated.task import FederatedTask
from shared_model.model.exchange import load_exchanged_state_dict
from shared_model.privacy.plan import check_privacy_settings
from synthetic.dataset import GeneratorDataset
from synthetic.generator import federated_generator, save_generator
from synthetic.training import STATE_FILE, GeneratorTrainer


def worst_site_privacy(privacy: dict) -> dict:
    """The latest round's DP record of the site with the largest ε (what a shared generator's card states)."""
    sites = [s for s in (privacy["rounds"][-1]["sites"].values() if privacy["rounds"] else []) if wire.EPSILON in s]
    return max(sites, key=lambda s: s[wire.EPSILON]) if sites else {"mode": "none"}


class GeneratorTask(FederatedTask):
    """The conditional diffusion generator, federated."""

    name = "generator"

    def resolve(self, app: FederationAppConfig) -> FederationAppConfig:
        """The privacy settings alone: the diffusion loss of one image reads that image only, so
        there is no contrastive term to refuse."""
        check_privacy_settings(app)
        return app

    def build_model(self, app: FederationAppConfig) -> torch.nn.Module:
        """The generator of ``app.generator`` (Opacus-compatible under DP-SGD)."""
        return federated_generator(app.generator, app.privacy.mode == "dp-sgd")

    def train_site(self, app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                   server_round: int, config: dict, expected: Expected = Expected()) -> RoundResult:
        """``app.train.steps`` generator steps from ``global_state``; the new weights and metrics."""
        records = load_training_records(replace(app.data, manifests=list(site.manifests)))
        model = self.build_model(app)
        expected.check(site.name, model)
        load_exchanged_state_dict(model, global_state)
        total_steps = app.federation.rounds * app.train.steps
        session = open_privacy(app, site, model, records, total_steps)
        if session is not None and not session.allows(app.train.steps):
            return budget_stop(model, session, server_round)
        synth = SynthAppConfig(generator=app.generator, data=app.data, privacy=app.privacy, train=SynthTrainConfig(
            steps=total_steps, batch_size=app.train.batch_size, lr=app.train.lr, warmup_steps=app.train.warmup_steps,
            device=site.device, seed=site_seed(app.train.seed, site.name, 1), num_workers=app.data.num_workers))
        trainer = GeneratorTrainer(model, synth,
                                   GeneratorDataset(records, app.generator.image_size, model.conditioning), session)
        folder = site.state_dir / "generator"
        if (folder / STATE_FILE).is_file():
            trainer.load_state(folder)
        stats = trainer.run(app.train.steps, progress=False)
        metrics = {wire.NUM_EXAMPLES: len(records), wire.SITE_WEIGHT: 1.0, wire.SERVER_ROUND: server_round,
                   wire.STEPS: stats.steps, wire.SECONDS: round(stats.seconds, 3), "skipped-images": stats.skipped}
        privacy: dict = {"mode": "none"}
        if session is not None:
            metrics[wire.EPSILON] = session.record(stats.steps, {"round": server_round})
            privacy = session.describe()
        else:
            metrics["loss.diffusion"] = stats.loss
        folder.mkdir(parents=True, exist_ok=True)
        trainer.save_state(folder)
        trainer.close()
        return RoundResult.of(model, metrics, privacy)

    def write_model(self, model: torch.nn.Module, app: FederationAppConfig, folder: Path, server_round: int,
                    privacy: dict) -> list[str]:
        """A generator folder with the worst site's ε on its card."""
        return save_generator(model, None, folder, {"round": server_round, "privacy": worst_site_privacy(privacy)})
