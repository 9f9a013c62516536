"""What a DP-SGD run will do and may spend, resolved before the first step: the config checks
that refuse settings without a valid guarantee, and the per-site plan (unit count N, sampling
rate q, noise multiplier σ, δ) that the trainer, the ledger and the privacy report share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from shared_model.config import PrivacyConfig, TrainAppConfig
from shared_model.privacy.accounting import ACCOUNTANTS, History, calibrate_noise
from shared_model.privacy.errors import PrivacyConfigError
from shared_model.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from shared_model.privacy.units import RNG_DESCRIPTION, UNITS

MODES = ("none", "dp-sgd")
CLIPPING = ("ghost", "hooks")
CENTRAL_MODES = ("none", "fixed", "adaptive")


def privacy_problems(p: PrivacyConfig) -> list[str]:
    """What is wrong with the privacy settings themselves, whatever is being trained."""
    problems = []
    if p.mode not in MODES:
        problems.append(f"privacy.mode must be one of {MODES}, got {p.mode!r}")
    if p.central not in CENTRAL_MODES:
        problems.append(f"privacy.central must be one of {CENTRAL_MODES}, got {p.central!r}")
    if p.mode == "dp-sgd":
        if p.unit not in UNITS:
            problems.append(f"privacy.unit must be one of {UNITS}, got {p.unit!r}")
        if p.accountant not in ACCOUNTANTS:
            problems.append(f"privacy.accountant must be one of {sorted(ACCOUNTANTS)}, got {p.accountant!r}"
                            + (" (GDP can under-report ε and is not offered)" if p.accountant == "gdp" else ""))
        if p.sampling != "poisson":
            problems.append(f"privacy.sampling={p.sampling!r}: DP-SGD's accountant models Poisson sampling of units; "
                            "fixed-size or shuffled batches are not covered by the reported ε")
        if p.clipping not in CLIPPING:
            problems.append(f"privacy.clipping must be one of {CLIPPING}, got {p.clipping!r}")
        if p.max_grad_norm <= 0:
            problems.append(f"privacy.max_grad_norm must be > 0, got {p.max_grad_norm}")
        if p.centre_noise_multiplier <= 0:
            problems.append(f"privacy.centre_noise_multiplier must be > 0, got {p.centre_noise_multiplier}")
        if p.noise_multiplier is not None and p.noise_multiplier <= 0:
            problems.append(f"privacy.noise_multiplier must be > 0 under DP-SGD, got {p.noise_multiplier}")
        if p.epsilon_budget <= 0:
            problems.append(f"privacy.epsilon_budget must be > 0, got {p.epsilon_budget}")
        if p.delta is not None and not 0 < p.delta < 1:
            problems.append(f"privacy.delta must be in (0, 1), got {p.delta}")
        if p.sample_rate is not None and not 0 < p.sample_rate <= 1:
            problems.append(f"privacy.sample_rate must be in (0, 1], got {p.sample_rate}")
    return problems


def _objective_problems(app: TrainAppConfig) -> list[str]:
    """Loss terms and model parts of the foundation model that DP-SGD's per-unit clipping does not cover."""
    problems = []
    if app.loss.image_text > 0 and app.loss.image_text_variant != "bank":
        problems.append(f"loss.image_text_variant={app.loss.image_text_variant!r} is in-batch contrast, which "
                        "couples examples: use loss.image_text_variant=bank (contrast against public prompt "
                        "embeddings) or loss.image_text=0")
    if app.loss.image_image > 0:
        problems.append("loss.image_image > 0: cross-modality contrast is in-batch and couples examples; "
                        "set loss.image_image=0 under DP-SGD")
    if app.model.volume_max_slices > 0:
        problems.append(f"model.volume_max_slices={app.model.volume_max_slices}: the slice adapter trains a "
                        "volume's B-scans together, which the per-unit clipping here does not cover yet; set "
                        "model.volume_max_slices=0 under DP-SGD (a volume then trains one random B-scan)")
    return problems


def _sampling_problems(app: TrainAppConfig) -> list[str]:
    if app.privacy.mode == "dp-sgd" and app.data.class_balance > 0:
        return [f"data.class_balance={app.data.class_balance}: DP-SGD samples its units by Poisson "
                "sampling at one rate, which the accountant models; set data.class_balance=0"]
    return []


def refuse(problems: list[str]) -> None:
    """Raise :class:`PrivacyConfigError` listing ``problems``, if there are any."""
    if problems:
        raise PrivacyConfigError("privacy configuration refused:\n  - " + "\n  - ".join(problems))


def check_privacy_settings(app: TrainAppConfig) -> None:
    """Refuse privacy settings without a valid guarantee, whatever model is trained."""
    refuse(privacy_problems(app.privacy) + _sampling_problems(app))


def resolve_privacy(app: TrainAppConfig) -> TrainAppConfig:
    """Check the privacy settings of a run training the foundation model and apply the automatic
    model fixes.

    Raises :class:`PrivacyConfigError` listing every problem; returns ``app`` with
    ``model.opacus_compatible`` set when DP-SGD is on (BatchNorm centring -> GroupNorm).
    """
    dp = app.privacy.mode == "dp-sgd"
    refuse(privacy_problems(app.privacy) + (_objective_problems(app) if dp else []) + _sampling_problems(app))
    if dp and not app.model.opacus_compatible:
        app = replace(app, model=replace(app.model, opacus_compatible=True))
    return app


@dataclass(frozen=True)
class DPPlan:
    """One site's DP-SGD parameters."""

    unit: str
    units: int  # N
    sample_rate: float  # q
    noise_multiplier: float  # σ
    max_grad_norm: float  # C
    delta: float
    accountant: str
    epsilon_budget: float
    clipping: str  # how the unit norms are computed (ghost or hooks): the same clipped sum either way

    def describe(self) -> dict[str, str | float | int]:
        """The plan as flat values for metrics and the privacy report."""
        return {"mode": "dp-sgd", "unit": self.unit, "units": self.units, "sample-rate": self.sample_rate,
                "noise-multiplier": self.noise_multiplier, "max-grad-norm": self.max_grad_norm,
                "delta": self.delta, "accountant": self.accountant, "epsilon-budget": self.epsilon_budget,
                "rng": RNG_DESCRIPTION}


def plan_dp(p: PrivacyConfig, record_units: list[int], batch_size: int, planned_steps: int,
            ledger: PrivacyLedger | None = None, releases: History = ()) -> DPPlan:
    """The plan for a site with these records: q = batch_size / N unless set, δ = 1/(10 N)
    unless set (or the ledger's), σ calibrated so ``planned_steps`` together with the one-off
    ``releases`` spend the budget unless set."""
    units = len(set(record_units))
    if units == 0:
        raise PrivacyConfigError("no training records: nothing to sample under DP-SGD")
    rate = p.sample_rate if p.sample_rate is not None else min(1.0, batch_size / units)
    delta = p.delta if p.delta is not None else (ledger.delta if ledger is not None else 1.0 / (10 * units))
    sigma = p.noise_multiplier
    if sigma is None:
        sigma = calibrate_noise(p.accountant, p.epsilon_budget, delta, rate, max(planned_steps, 1), releases)
    return DPPlan(p.unit, units, rate, sigma, p.max_grad_norm, delta, p.accountant, p.epsilon_budget, p.clipping)


def open_ledger(state_dir: Path, p: PrivacyConfig, trained_before: bool) -> PrivacyLedger | None:
    """The site's ledger, or None for a site that has never trained. A site that has trained
    (``trained_before``) but has no ledger, or whose ledger is damaged, raises
    :class:`LedgerError`: it must not train and must not restart from ε = 0."""
    path = state_dir / LEDGER_FILE
    if not path.exists():
        if trained_before:
            raise LedgerError(f"{path}: missing, but {state_dir} holds earlier training state; refusing to train "
                              "rather than restart the privacy accounting from ε = 0")
        return None
    ledger = PrivacyLedger.load(path)
    ledger.check_matches(path, p.accountant, p.delta if p.delta is not None else ledger.delta, p.unit)
    return ledger
