"""What every federated task's site round shares: where a site's data and state live
(:class:`Site`), the coordinator's announced model schema and version (:class:`Expected`), the
reply (:class:`RoundResult`), the site's seed, and its DP-SGD session and budget stop. Nothing
here is sent to the coordinator but the reply."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared_model import wire
from shared_model.config import FederationAppConfig
from shared_model.model.exchange import app_version, exchanged_state_dict, exchanged_statistics, schema_digest
from shared_model.privacy.session import DPSession

TRAINED_MARKERS = ("trainer", "generator")  # folders in a site's state dir that show it has trained


@dataclass(frozen=True)
class Site:
    """Where a site's data and state live; never sent to the coordinator."""

    name: str
    manifests: list[str]
    state_dir: Path
    device: str = "auto"


class SchemaMismatchError(RuntimeError):
    """The coordinator runs another model schema or app version than this site."""


@dataclass(frozen=True)
class Expected:
    """What the coordinator announced with the round: its model schema digest and app version."""

    schema: str | None = None
    version: str | None = None

    @classmethod
    def announced(cls, config) -> Expected:
        """What a round's config record announces (absent keys: not checked)."""
        return cls(config.get(wire.MODEL_SCHEMA), config.get(wire.APP_VERSION))

    def check(self, site: str, model: torch.nn.Module) -> None:
        """Raise :class:`SchemaMismatchError` unless this site's model and version match (the digest
        over NumPy views equals the coordinator's over its Flower arrays: same names, shapes, dtypes)."""
        problems = []
        if self.version is not None and self.version != app_version():
            problems.append(f"app version: coordinator {self.version}, site {app_version()}")
        exchanged = {name: value.numpy() for name, value in exchanged_state_dict(model).items()}
        if self.schema is not None and self.schema != schema_digest(exchanged):
            problems.append("model schema (exchanged tensor names, shapes or dtypes) differs from the coordinator's")
        if problems:
            raise SchemaMismatchError(f"site {site} cannot take part: " + "; ".join(problems)
                                      + ". Install the coordinator's RetinaFL version at this site.")


@dataclass
class RoundResult:
    """A site's reply to a training round: weights, metrics, and the DP settings it trained under."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    privacy: dict[str, str | float | int]  # {"mode": "none"} or the DP plan and ε so far
    statistics: frozenset[str] = frozenset()  # the names in ``state`` that are running statistics

    @classmethod
    def of(cls, model: torch.nn.Module, metrics: dict[str, float],
           privacy: dict[str, str | float | int]) -> RoundResult:
        """The reply carrying ``model``'s exchanged state."""
        return cls(exchanged_state_dict(model), metrics, privacy, exchanged_statistics(model))


def site_seed(seed: int, site: str, server_round: int) -> int:
    """Seed of a site's first round: distinct per (run seed, site), stable across processes."""
    return int(np.random.SeedSequence([seed, zlib.crc32(site.encode()), server_round]).generate_state(1)[0])


def open_privacy(app: FederationAppConfig, site: Site, model: torch.nn.Module, records: list,
                 total_steps: int) -> DPSession | None:
    """The DP-SGD session of this site's round, or None without DP. A site whose state shows
    earlier training must have its ledger (LedgerError otherwise)."""
    if app.privacy.mode != "dp-sgd":
        return None
    trained = any((site.state_dir / marker).is_dir() for marker in TRAINED_MARKERS)
    return DPSession.open(site.state_dir, app.privacy, model, records, app.train.batch_size, total_steps, trained)


def budget_stop(model: torch.nn.Module, session: DPSession, server_round: int) -> RoundResult:
    """The reply of a site whose next round would pass its ε budget: no steps, its ε so far."""
    metrics = {wire.NUM_EXAMPLES: 0, wire.SITE_WEIGHT: 0.0, wire.SERVER_ROUND: server_round, wire.STEPS: 0,
               wire.BUDGET_EXHAUSTED: 1, wire.EPSILON: session.ledger.spent()}
    return RoundResult.of(model, metrics, session.describe())
