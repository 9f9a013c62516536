"""The federated-task seam: what a federation trains, as one object per task with the few
operations a round needs on either side — check the run's privacy settings for it, build the
model, run a site's round, score the global model at a site, write a round's model, evaluate an
aggregate at the coordinator. The ClientApp and the coordinator call these and never ask which
task they run (cf. Flower's quickstart, whose ``task.py`` holds model, train and test).

Tasks are found by name among the installed package's ``retinafl.federated_tasks`` entry points
(pyproject.toml): ``foundation`` (:mod:`shared_model.federated.foundation`, the CLIP+MAE model)
and ``generator`` (:mod:`synthetic.federated_task`, the synthetic-corpus generator). A new task
is one module and one entry-point line; the run config names a registered task, never an import
path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path

import torch

from shared_model.config import FederationAppConfig
from shared_model.federated.site import Expected, RoundResult, Site

ENTRY_POINTS = "retinafl.federated_tasks"


class FederatedTask(ABC):
    """One task's operations; a subclass implements what its federation does."""

    name: str = ""
    federated_evaluation: bool = False  # whether sites score each aggregate on their test split

    @abstractmethod
    def resolve(self, app: FederationAppConfig) -> FederationAppConfig:
        """``app`` with its privacy settings checked for this task (PrivacyConfigError listing
        every problem) and the model fixes DP-SGD needs applied."""

    @abstractmethod
    def build_model(self, app: FederationAppConfig) -> torch.nn.Module:
        """The model the federation trains, freshly initialised from ``app``'s seed state."""

    @abstractmethod
    def train_site(self, app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                   server_round: int, config: dict, expected: Expected = Expected()) -> RoundResult:
        """One site's training round from the global weights; ``config``: the round's config record."""

    def evaluate_site(self, app: FederationAppConfig, site: Site, global_state: dict[str, torch.Tensor],
                      server_round: int, expected: Expected = Expected()) -> dict[str, float]:
        """A site's score of the global weights on its test split (only if ``federated_evaluation``)."""
        raise RuntimeError(f"task {self.name!r} has no federated evaluation (federated_evaluation is False)")

    @abstractmethod
    def write_model(self, model: torch.nn.Module, app: FederationAppConfig, folder: Path, server_round: int,
                    privacy: dict) -> list[str]:
        """Write a round's global model into ``folder``; returns the file names written.
        ``privacy``: the run's privacy state (settings, per-round site records)."""

    def evaluate(self, model: torch.nn.Module, app: FederationAppConfig, device: torch.device) -> dict:
        """The common evaluator's results for an aggregate at the coordinator ({}: none)."""
        return {}


def task_for(name: str) -> FederatedTask:
    """The registered task called ``name`` (ValueError naming the registered ones otherwise)."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
    if name not in found:
        raise ValueError(f"task={name!r} is not one of {', '.join(sorted(found)) or '(none installed)'}")
    return found[name].load()()
