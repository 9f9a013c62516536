"""Training the generator at a site: the DDPM noise-prediction loss (Ho et al. 2020) with a cosine
noise schedule (Nichol & Dhariwal 2021), condition dropout for classifier-free guidance, AdamW
with warm-up and cosine decay, EMA weights (diffusers' ``EMAModel``), bf16 autocast on CUDA, a
progress bar, and exact resumption from the run folder. Without val/test rows a seeded share of
the site's patients is held out of training for the audit (:mod:`synthetic.holdout`). With
``privacy.mode=dp-sgd`` the steps are DP-SGD steps with the foundation model's accountant, units,
ledger and budget rules — valid because the diffusion loss of one image reads that image only."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, RandomSampler

from shared_model.atomic_files import atomic_path, write_json_atomic
from shared_model.conf import write_resolved_config
from shared_model.config import SynthAppConfig
from shared_model.data.manifest import load_training_records
from shared_model.model.state_dicts import read_trainer_state
from shared_model.privacy.dp_step import DPStep
from shared_model.privacy.errors import PrivacyConfigError
from shared_model.privacy.model_fixes import make_opacus_compatible
from shared_model.privacy.plan import privacy_problems
from shared_model.privacy.session import DPSession
from shared_model.reporting.metrics_log import MetricsLog
from shared_model.reporting.run_report import write_run_report
from shared_model.runtime import resolve_device, seed_everything
from shared_model.train.trainer import progress_columns, progress_info
from synthetic.conditioning import Conditioning, training_mix
from synthetic.dataset import GeneratorDataset, collate_images
from synthetic.generator import GENERATOR_DIR, ConditionalUNet, load_generator, save_generator
from synthetic.holdout import HOLDOUT_FILE, hold_out

log = logging.getLogger(__name__)

STATE_FILE = "generator_state.pt"
LOSS_WINDOW = 5  # logged steps averaged at each end of a run's loss summary


def noise_scheduler(num_train_timesteps: int):
    """The training (and reference sampling) schedule: DDPM with the cosine betas."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon")


@dataclass
class GeneratorStats:
    """What one :meth:`GeneratorTrainer.run` did."""

    steps: int
    images: int
    seconds: float
    loss: float  # mean over the steps
    skipped: int
    logged: list[tuple[int, float]]  # (step, loss) of the steps logged every train.log_every


class GeneratorTrainer:
    """Optimizer, schedule, EMA and (under DP-SGD) a :class:`DPStep` around a :class:`ConditionalUNet`."""

    def __init__(self, model: ConditionalUNet, app: SynthAppConfig, dataset: GeneratorDataset,
                 session: DPSession | None = None):
        from diffusers.training_utils import EMAModel
        from transformers import get_cosine_schedule_with_warmup

        cfg = app.train
        self.cfg, self.dataset = cfg, dataset
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.scheduler = noise_scheduler(app.generator.num_train_timesteps)
        self.condition_dropout = app.generator.condition_dropout
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.lr_schedule = get_cosine_schedule_with_warmup(self.optimizer, min(cfg.warmup_steps, cfg.steps - 1),
                                                           cfg.steps)
        # With warm-up the EMA decay grows from 0 towards ema_decay (1 - (1 + step)^-3/4), so early
        # checkpoints are not dominated by the random initial weights.
        self.ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
        self.autocast = self.device.type == "cuda" and cfg.precision == "bf16"
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.dp = None if session is None else DPStep(model, self.optimizer, session.plan, session.record_units,
                                                      self.device)

    def _loader(self) -> DataLoader:
        if self.dp is not None:
            return DataLoader(self.dataset, batch_sampler=self.dp.batches(), collate_fn=collate_images,
                              num_workers=self.cfg.num_workers)
        sampler = RandomSampler(self.dataset, replacement=True, num_samples=10 ** 9, generator=self.generator)
        return DataLoader(self.dataset, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=collate_images,
                          num_workers=self.cfg.num_workers, drop_last=True)

    def losses(self, images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Per-example noise-prediction MSE [N] at random timesteps (conditions dropped at random)."""
        n = len(images)
        flip = torch.rand(n, generator=self.generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)
        keep = (torch.rand(n, generator=self.generator) >= self.condition_dropout).to(condition.dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=self.generator)
        noise = torch.randn(images.shape, generator=self.generator)
        images, noise, timesteps = images.to(self.device), noise.to(self.device), timesteps.to(self.device)
        noisy = self.scheduler.add_noise(images, noise, timesteps)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            pred = self.model(noisy, timesteps, condition.to(self.device) * keep.to(self.device)[:, None])
        return ((pred.float() - noise) ** 2).flatten(1).mean(dim=1)

    def train_step(self, batch: dict) -> float:
        """One optimizer step (a DP-SGD step over units under DP); returns the batch loss."""
        self.model.train()
        if self.dp is None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.dp.zero_grad()
        loss = torch.zeros(())
        if len(batch["index"]):
            with nullcontext() if self.dp is None else self.dp.forward():
                loss = self.losses(batch["image"], batch["condition"]).mean()
            loss.backward()
        if self.dp is None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        else:
            self.dp.noise(batch["index"])
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.step(self.model.parameters())
        self.step += 1
        return float(loss.detach())

    def run(self, steps: int, progress: bool = True, metrics: MetricsLog | None = None) -> GeneratorStats:
        """Train ``steps`` steps."""
        total = images = skipped = done = 0
        logged: list[tuple[int, float]] = []
        start = time.perf_counter()
        with Progress(*progress_columns(), disable=not progress) as bar:
            task = bar.add_task("generator", total=steps, info="")
            for batch in self._loader():
                if done >= steps:
                    break
                skipped += len(batch["skipped"])
                loss = self.train_step(batch)
                done += 1
                total += loss
                images += len(batch["index"])
                bar.update(task, advance=1, info=progress_info({"loss": loss}, images / (time.perf_counter() - start)))
                if self.step % self.cfg.log_every == 0 or done == steps:
                    logged.append((self.step, loss))
                    if metrics is not None:
                        metrics.append({"step": self.step, "loss": loss, "lr": self.lr_schedule.get_last_lr()[0],
                                        "images_per_s": images / (time.perf_counter() - start)})
        return GeneratorStats(done, images, time.perf_counter() - start, total / max(done, 1), skipped, logged)

    def close(self) -> None:
        """Take the DP hooks off the model (when done training: see :meth:`DPStep.close`)."""
        if self.dp is not None:
            self.dp.close()

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA weights as a state dict of the model."""
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ema.restore(self.model.parameters())
        return state

    # --- resumption --------------------------------------------------------------------------
    def save_state(self, folder: Path) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                 "ema": self.ema.state_dict(), "step": self.step, "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        with atomic_path(folder / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def load_state(self, folder: Path) -> None:
        state = read_trainer_state(folder / STATE_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.ema.load_state_dict(state["ema"])
        self.step = state["step"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


def loss_trend(logged: list[tuple[int, float]], window: int = LOSS_WINDOW) -> dict | None:
    """The mean loss over the first and over the last ``window`` logged (step, loss) pairs (fewer
    in a short run, never overlapping) and the steps each spans: the trend ``metrics.jsonl`` and
    the progress bar show, in two numbers (``None`` when nothing was logged)."""
    if not logged:
        return None
    count = max(1, min(window, len(logged) // 2))
    head, tail = logged[:count], logged[-count:]
    return {"first": sum(loss for _, loss in head) / count, "first_steps": [head[0][0], head[-1][0]],
            "last": sum(loss for _, loss in tail) / count, "last_steps": [tail[0][0], tail[-1][0]]}


def train_generator(app: SynthAppConfig, progress: bool = True) -> dict:
    """Train (or, with ``resume``, continue) the generator on ``app.data.manifests``' train rows,
    less the patients held out for the audit when the manifests have no val/test rows
    (:func:`synthetic.holdout.hold_out`); the run folder gets ``config.yaml``, ``metrics.jsonl``,
    ``generator/`` (weights, EMA weights, description), the trainer state, ``holdout.json`` when
    patients were held out and, under DP-SGD, the privacy ledger. Returns a summary."""
    problems = privacy_problems(app.privacy)
    if problems:
        raise PrivacyConfigError("privacy configuration refused:\n  - " + "\n  - ".join(problems))
    run_dir = Path(app.run_dir)
    write_resolved_config(app, run_dir)
    folder = run_dir / GENERATOR_DIR
    resuming = app.resume and (run_dir / STATE_FILE).is_file()
    records, heldout = hold_out(app, load_training_records(app.data), resuming)
    seed_everything(app.train.seed)
    if resuming:
        model, _ = load_generator(folder, use_ema=False)
    else:
        model = ConditionalUNet(app.generator, Conditioning.from_records(records))
    model, fixes = make_opacus_compatible(model) if app.privacy.mode == "dp-sgd" else (model, [])
    session = None
    if app.privacy.mode == "dp-sgd":
        session = DPSession.open(run_dir, app.privacy, model, records, app.train.batch_size, app.train.steps,
                                 trained_before=(run_dir / STATE_FILE).is_file())
    dataset = GeneratorDataset(records, app.generator.image_size, model.conditioning)
    trainer = GeneratorTrainer(model, app, dataset, session)
    if resuming:
        trainer.load_state(run_dir)
        log.info("resumed %s at step %d", run_dir, trainer.step)
    log.info("generator on %d images, %d categories, modalities %s, %s", len(records),
             len(model.conditioning.categories), ", ".join(model.conditioning.modalities), trainer.device)
    label_mix, modality_mix = training_mix(records)
    chunks: list[GeneratorStats] = []
    every = app.train.checkpoint_every or app.train.steps
    metrics = MetricsLog(run_dir, app.report.tensorboard)
    while trainer.step < app.train.steps:
        chunk = min(every, app.train.steps - trainer.step)
        if session is not None and not session.allows(chunk):
            break
        chunks.append(trainer.run(chunk, progress, metrics))
        extra = {"step": trainer.step, "model_fixes": fixes, "images": len(records),
                 "label_mix": {";".join(k): v for k, v in label_mix.items()}, "modality_mix": modality_mix}
        if session is not None:
            session.record(chunks[-1].steps, {"step": trainer.step})
            extra["privacy"] = session.describe()
        save_generator(model, trainer.ema_state(), folder, extra)
        trainer.save_state(run_dir)
    trainer.close()
    steps = sum(c.steps for c in chunks)
    summary = {"step": trainer.step, "steps_this_run": steps, "device": str(trainer.device),
               "loss": loss_trend([point for c in chunks for point in c.logged]),
               "images_per_s": sum(c.images for c in chunks) / max(sum(c.seconds for c in chunks), 1e-9),
               "skipped_images": sum(c.skipped for c in chunks),
               "holdout": {"patients": len({r.patient_id for r in heldout}), "rows": len(heldout),
                           "file": str(run_dir / HOLDOUT_FILE)} if heldout else None,
               "privacy": session.describe() if session is not None else {"mode": "none"}}
    write_json_atomic(run_dir / "train_summary.json", summary)
    metrics.close()
    if app.report.html:
        write_run_report(run_dir)
    return summary
