"""The local trainer: AdamW + cosine warm-up schedule, gradient clipping, bf16 autocast on CUDA,
a rich progress bar with loss terms and images/s, and exact resumption from its own state
(optimizer, schedule, data position, RNG).

The same :class:`LocalTrainer` serves ``retina-train`` (centralized) and a federated site's
ClientApp, which calls :meth:`LocalTrainer.run` for a number of steps each round.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader

from shared_model.atomic_files import atomic_path
from shared_model.config import TrainConfig
from shared_model.data.dataset import Batch, EpochBatchSampler, RetinaDataset, collate
from shared_model.losses.objective import EyeCLIPObjective, ObjectiveOutput
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.model.state_dicts import read_trainer_state
from shared_model.reporting.metrics_log import MetricsLog
from shared_model.train.optim import build_optimizer, build_scheduler
from shared_model.train.proximal import ProximalTerm

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"


SHORT_TERMS = {"image_text": "i-t", "image_image": "i-i", "mae": "mae"}  # the progress line's term labels


def progress_columns() -> tuple:
    """The columns of a training progress bar (the task's description, a 12-column bar, steps,
    time, its ``info`` field), narrow enough for 80 columns with :func:`progress_info`."""
    return (TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"))


def progress_info(terms: dict[str, float], rate: float) -> str:
    """The progress bar's figures: each loss term to 3 significant digits (``i-t`` image-text,
    ``i-i`` cross-modality, ``mae``; other names as they are) and the images per second."""
    shown = " ".join(f"{SHORT_TERMS.get(name, name)} {value:.3g}" for name, value in terms.items())
    return f"{shown}  {rate:.0f} img/s" if shown else f"{rate:.0f} img/s"


@dataclass
class TrainStats:
    """What one call of :meth:`LocalTrainer.run` did. A loss term that a step did not compute
    (no modality pair in its batch, say) is absent from that step: each term's mean is over the
    ``term_steps`` that computed it, and a term no step computed is not in ``losses`` at all."""

    steps: int
    images: int  # image rows through the tower (a volume counts its slices)
    seconds: float
    images_per_s: float
    losses: dict[str, float]  # per term and 'total': mean over the steps that computed it
    skipped: list[str] = field(default_factory=list)  # distinct unreadable images ("path: reason")
    term_steps: dict[str, int] = field(default_factory=dict)  # steps that computed each term
    anchors: int = 0  # anchor items trained on
    paired: int = 0  # anchors that had a partner of another modality in their batch

    @staticmethod
    def merge(chunks: list[TrainStats]) -> TrainStats:
        """Totals over consecutive runs (each term's mean weighted by the steps that computed it)."""
        steps = sum(c.steps for c in chunks)
        seconds = sum(c.seconds for c in chunks)
        images = sum(c.images for c in chunks)
        counts: dict[str, int] = defaultdict(int)
        sums: dict[str, float] = defaultdict(float)
        for c in chunks:
            for name, value in c.losses.items():
                counts[name] += c.term_steps[name]
                sums[name] += value * c.term_steps[name]
        skipped = list(dict.fromkeys(r for c in chunks for r in c.skipped))  # a file once, however often it failed
        return TrainStats(steps, images, seconds, images / max(seconds, 1e-9), {n: sums[n] / counts[n] for n in sums},
                          skipped, dict(counts), sum(c.anchors for c in chunks), sum(c.paired for c in chunks))


class LocalTrainer:
    """Trains a RetinaCLIP model with the EyeCLIP objective on a RetinaDataset."""

    def __init__(self, model: RetinaCLIP, objective: EyeCLIPObjective, cfg: TrainConfig, device: torch.device,
                 total_steps: int | None = None, num_workers: int = 0, proximal: ProximalTerm | None = None):
        self.model = model.to(device)
        self.proximal = proximal  # FedProx: added to the loss, anchored at the round's global weights
        self.objective = objective
        self.cfg = cfg
        self.device = device
        self.num_workers = num_workers
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps or cfg.steps)
        self.autocast = device.type == "cuda" and cfg.precision == "bf16"
        self.step = self.epoch = self.batch_in_epoch = 0
        self.unreadable: set[str] = set()  # unreadable images already warned about, once each

    # --- one step ----------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> ObjectiveOutput:
        """Forward, loss, backward, clip, optimizer and schedule step on one batch."""
        self.model.train()
        imgs = batch.model_input(self.device, self.model.input_norm)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(imgs, batch.texts, None if batch.layout is None else batch.layout.to(self.device))
            flip = None if batch.pair_flip is None else batch.pair_flip.to(self.device)
            loss = self.objective(self.model, out, imgs, batch.label_ids.to(self.device),
                                  batch.pair_index.to(self.device), batch.labels, flip)
        total = loss.total if self.proximal is None else loss.total + self.proximal(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss

    # --- the loop ----------------------------------------------------------------------------
    def accepts(self, batch: Batch) -> bool:
        """Whether a batch is trained on: a contrastive batch needs two anchors."""
        return batch.n_anchors >= 2

    def _loader(self, dataset: RetinaDataset) -> DataLoader:
        sampler = EpochBatchSampler(len(dataset), self.cfg.batch_size, self.cfg.seed, self.epoch, self.batch_in_epoch,
                                    dataset.sample_weights)
        # A private generator: DataLoader otherwise draws its worker base seed from the global RNG,
        # which would shift the masking noise of a resumed run.
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(self.cfg.seed))

    def run(self, dataset: RetinaDataset, steps: int, max_seconds: float | None = None, progress: bool = True,
            metrics: MetricsLog | None = None, label: str = "train") -> TrainStats:
        """Train for ``steps`` steps (or until ``max_seconds``), continuing the data order where it stopped."""
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        skipped: dict[str, None] = {}  # distinct, in the order met: a file fails each time it is drawn
        done = images = anchors = paired = 0
        start = time.perf_counter()
        with Progress(*progress_columns(), disable=not progress, transient=False) as bar:
            task = bar.add_task(label, total=steps, info="")
            while done < steps and not self._out_of_time(start, max_seconds):
                for batch in self._loader(dataset):
                    self.batch_in_epoch += 1
                    self._note_unreadable(batch.skipped, skipped)
                    if not self.accepts(batch):
                        continue
                    loss = self.train_step(batch)
                    done += 1
                    images += len(batch.images)
                    anchors += batch.n_anchors
                    paired += batch.n_paired
                    for name, value in {**loss.terms, "total": float(loss.total.detach())}.items():
                        sums[name] += value
                        counts[name] += 1
                    rate = images / max(time.perf_counter() - start, 1e-9)
                    bar.update(task, advance=1, info=progress_info(loss.terms, rate))
                    if metrics is not None and (self.step % self.cfg.log_every == 0 or done == steps):
                        metrics.append(self._log_line(loss, rate))
                    if done >= steps or self._out_of_time(start, max_seconds):
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
        seconds = time.perf_counter() - start
        return TrainStats(done, images, seconds, images / max(seconds, 1e-9),
                          {k: v / counts[k] for k, v in sums.items()}, list(skipped), dict(counts), anchors, paired)

    def _note_unreadable(self, reasons: list[str], skipped: dict[str, None]) -> None:
        """Add a batch's unreadable images to this run's distinct ``skipped``; warn once per file."""
        for reason in reasons:
            skipped[reason] = None
            if reason not in self.unreadable:
                self.unreadable.add(reason)
                log.warning("unreadable image, skipped whenever it is drawn: %s", reason)

    @staticmethod
    def _out_of_time(start: float, max_seconds: float | None) -> bool:
        return max_seconds is not None and time.perf_counter() - start >= max_seconds

    def _log_line(self, loss: ObjectiveOutput, rate: float) -> dict:
        return {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                "loss": float(loss.total.detach()), **{f"loss_{k}": v for k, v in loss.terms.items()},
                "logit_scale": float(self.model.logit_scale().detach()), "images_per_s": rate}

    # --- resumption --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything besides the weights needed to continue bit-for-bit: optimizer, schedule, position, RNG."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                 "torch_rng": torch.get_rng_state(), "config": asdict(self.cfg)}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def close(self) -> None:
        """Let go of the model when training is done: the plain trainer holds nothing on it (the
        DP-SGD trainer takes its hooks off)."""

    def save_state(self, folder: Path) -> None:
        """Write ``trainer_state.pt`` atomically into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / STATE_FILE) as tmp:
            torch.save(self.state_dict(), tmp)

    def load_state(self, folder: Path) -> None:
        """Restore from ``folder/trainer_state.pt`` (tensors and plain values only: ``weights_only=True``)."""
        self.load_state_dict(read_trainer_state(folder / STATE_FILE))
