"""DP-SGD training of RetinaCLIP (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
:class:`LocalTrainer`'s loop with every step a :class:`~shared_model.privacy.dp_step.DPStep` —
Poisson-sampled privacy units, per-unit clipping to C (ghost norms and book-keeping by default,
``privacy.clipping=ghost``; Opacus' per-image hooks with ``hooks``), Gaussian noise of std
σ·C on the sum, divided by the expected batch size.

Clipping is per unit (a patient, or the image itself), and so is ε. The objective must be
per-example decomposable, the CLIP temperature is frozen (one scalar shared by the batch has no
per-example gradient), and FedProx's data-independent pull is added after the noise.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from shared_model.config import TrainConfig
from shared_model.data.dataset import Batch, RetinaDataset, collate
from shared_model.losses.objective import EyeCLIPObjective, ObjectiveOutput
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.privacy.dp_step import DPStep
from shared_model.privacy.errors import PrivacyConfigError
from shared_model.privacy.plan import DPPlan
from shared_model.train.proximal import ProximalTerm
from shared_model.train.trainer import LocalTrainer


class DPSGDTrainer(LocalTrainer):
    """:class:`LocalTrainer` whose steps are DP-SGD steps over privacy units."""

    def __init__(self, model: RetinaCLIP, objective: EyeCLIPObjective, cfg: TrainConfig, device: torch.device,
                 record_units: list[int], plan: DPPlan, total_steps: int | None = None, num_workers: int = 0,
                 proximal: ProximalTerm | None = None):
        if not objective.per_example_decomposable(model):
            raise PrivacyConfigError("DP-SGD needs a per-example decomposable objective: in-batch contrast couples "
                                     "examples, so clipping per example bounds nothing (set "
                                     "loss.image_text_variant=bank and loss.image_image=0, or use privacy=dp_sgd)")
        if model.temperature.log_scale.requires_grad:
            raise PrivacyConfigError("the model was not built for DP-SGD: set model.opacus_compatible=true "
                                     "(privacy=dp_sgd does), which also fixes the CLIP temperature")
        super().__init__(model, objective, cfg, device, total_steps, num_workers, proximal)
        self.dp = DPStep(self.model, self.optimizer, plan, record_units, self.device)

    def accepts(self, batch: Batch) -> bool:
        """Every Poisson batch is a step, even an empty one: the accountant counts it."""
        return True

    def _loader(self, dataset: RetinaDataset) -> DataLoader:
        return DataLoader(dataset, batch_sampler=self.dp.batches(), collate_fn=collate,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def train_step(self, batch: Batch) -> ObjectiveOutput:
        """One DP-SGD step: per-unit gradients, clipped, noised, applied."""
        if len(batch.pair_index) and int(batch.pair_index.max()) >= 0:
            raise PrivacyConfigError("modality partners in a DP-SGD batch: pairing must be off under DP-SGD")
        self.model.train()
        self.dp.zero_grad()
        if batch.indices:
            imgs = batch.model_input(self.device, self.model.input_norm)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast), self.dp.forward():
                out = self.model(imgs, batch.texts)
                loss = self.objective(self.model, out, imgs, batch.label_ids.to(self.device),
                                      batch.pair_index.to(self.device), batch.labels)
            loss.total.backward()
        else:
            loss = ObjectiveOutput(torch.zeros(()), {})
        self.dp.noise(batch.indices)
        if self.proximal is not None:
            self.proximal.add_gradient(self.model)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss

    def close(self) -> None:
        """Take the DP hooks off the model (call when done training: see :meth:`DPStep.close`)."""
        self.dp.close()
