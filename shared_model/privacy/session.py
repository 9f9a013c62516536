"""One trainer's DP-SGD session: plan the mechanism for its records, open (or start) its ledger,
check the budget before a block of steps, release the image-feature centre when the model needs
one, build the DP trainer, and record the steps taken. The federated site (one session per
round) and the centralized trainer share it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from shared_model.config import PrivacyConfig, TrainConfig
from shared_model.data.manifest import Record
from shared_model.losses.objective import EyeCLIPObjective
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.privacy.accounting import History
from shared_model.privacy.dp_trainer import DPSGDTrainer
from shared_model.privacy.feature_centre import centre_pending, release_image_centre, uses_released_centre
from shared_model.privacy.ledger import LEDGER_FILE, PrivacyLedger
from shared_model.privacy.plan import DPPlan, open_ledger, plan_dp
from shared_model.privacy.units import unit_ids
from shared_model.train.proximal import ProximalTerm

log = logging.getLogger(__name__)


@dataclass
class DPSession:
    """The plan, the ledger and where it lives, for one model and its records."""

    plan: DPPlan
    ledger: PrivacyLedger
    path: Path
    records: list[Record]
    record_units: list[int]
    model: RetinaCLIP
    centre_noise_multiplier: float = 2.0

    @classmethod
    def open(cls, state_dir: Path, p: PrivacyConfig, model: RetinaCLIP, records: list[Record], batch_size: int,
             planned_steps: int, trained_before: bool) -> DPSession:
        """Plan for ``records``; continue the ledger in ``state_dir`` (LedgerError if it is missing
        although ``trained_before``, damaged, or written under other settings). The plan always
        counts the image-centre release of a model that uses one, so σ is the same in every round."""
        ledger = open_ledger(state_dir, p, trained_before)
        units = unit_ids(records, p.unit)
        releases = [(p.centre_noise_multiplier, 1.0, 1)] if uses_released_centre(model) else []
        plan = plan_dp(p, units, batch_size, planned_steps, ledger, releases)
        ledger = ledger or PrivacyLedger(plan.accountant, plan.delta, plan.unit, plan.units)
        return cls(plan, ledger, state_dir / LEDGER_FILE, records, units, model, p.centre_noise_multiplier)

    def _pending(self) -> History:
        return [(self.centre_noise_multiplier, 1.0, 1)] if centre_pending(self.model) else []

    def allows(self, steps: int) -> bool:
        """Whether ``steps`` more steps (and a pending centre release) stay within the ε budget."""
        projected = self.ledger.spent([*self._pending(), (self.plan.noise_multiplier, self.plan.sample_rate, steps)])
        if projected > self.plan.epsilon_budget:
            log.warning("privacy budget: %d more steps would reach ε=%.3g > budget %.3g (spent %.3g); not training",
                        steps, projected, self.plan.epsilon_budget, self.ledger.spent())
            return False
        return True

    def prepare(self, image_size: int, device: torch.device) -> None:
        """Release the image-feature centre if the model still needs it, and record it in the
        ledger (saved before the model trains)."""
        if not centre_pending(self.model):
            return
        release_image_centre(self.model, self.records, self.record_units, self.plan.units,
                             self.centre_noise_multiplier, image_size, device)
        spent = self.ledger.record(self.centre_noise_multiplier, 1.0, 1, {"release": "image feature centre"})
        self.ledger.save(self.path)
        log.info("image feature centre released (noise multiplier %.3g): ε so far %.3g", self.centre_noise_multiplier,
                 spent)

    def trainer(self, objective: EyeCLIPObjective, cfg: TrainConfig, device: torch.device,
                total_steps: int, num_workers: int, proximal: ProximalTerm | None = None) -> DPSGDTrainer:
        """The DP-SGD trainer for this plan (call its ``close()`` when done training)."""
        return DPSGDTrainer(self.model, objective, cfg, device, self.record_units, self.plan, total_steps, num_workers,
                            proximal)

    def record(self, steps: int, label: dict) -> float:
        """Add the steps taken to the ledger and save it (before anything trained is released)."""
        spent = self.ledger.record(self.plan.noise_multiplier, self.plan.sample_rate, steps, label)
        self.ledger.save(self.path)
        return spent

    def describe(self) -> dict[str, str | float | int]:
        """Plan, ε so far and steps so far, for metrics and the privacy report."""
        described = {**self.plan.describe(), "epsilon": self.ledger.spent(), "steps-total": self.ledger.total_steps}
        if uses_released_centre(self.model):
            described["centre-noise-multiplier"] = self.centre_noise_multiplier
        return described
