"""Client-level ("central") differential privacy at the coordinator: each site's whole update is
clipped and Gaussian noise is added to their mean (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models"; adaptive clipping norm: Andrew et al. 2021, "Differentially
Private Learning with Adaptive Clipping"), with Flower's strategy wrappers, accounted with
Flower's RDP accountant (Google's dp-accounting underneath).

The guarantee covers the participation of a whole site. Sites are weighted equally (a weighted
mean would let a large site move the model by more than the clipping norm allows), and the noise
is scaled for ``federation.min_sites`` replies, the fewest a round can aggregate — more replies
only make it more private. No amplification by sampling is claimed.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting import (
    PrivacyConfig as AccountingConfig,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from shared_model.config import FederationConfig, PrivacyConfig

DEFAULT_CENTRAL_DELTA = 1e-5


def wrap_central_dp(strategy: Strategy, p: PrivacyConfig, fed: FederationConfig) -> Strategy:
    """``strategy`` inside Flower's server-side fixed or adaptive clipping wrapper."""
    if p.central == "fixed":
        return DifferentialPrivacyServerSideFixedClipping(strategy, p.central_noise_multiplier, p.central_clip,
                                                          fed.min_sites)
    if p.central == "adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(strategy, p.central_noise_multiplier, fed.min_sites,
                                                             initial_clipping_norm=p.central_clip,
                                                             target_clipped_quantile=p.central_target_quantile)
    raise ValueError(f"privacy.central must be fixed or adaptive here, got {p.central!r}")


class CentralAccountant:
    """ε of the client-level mechanism over the rounds released so far (persisted with each round)."""

    def __init__(self, p: PrivacyConfig, fed: FederationConfig, state: dict | None = None):
        self.noise_multiplier = p.central_noise_multiplier
        self.delta = p.central_delta if p.central_delta is not None else DEFAULT_CENTRAL_DELTA
        self.population = max(fed.min_available, fed.min_sites)
        self.accountant = RdpAccountant(AccountingConfig(
            target_delta=self.delta, population_size=self.population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        if state:
            self.accountant.load_state_dict(state)

    def release(self, sites: int) -> float:
        """Account one aggregated round with ``sites`` contributions; returns ε so far."""
        sample = min(sites, self.population)
        self.accountant.compose(GaussianPrivacyEvent(self.noise_multiplier, sample, self.population))
        return self.epsilon()

    def epsilon(self) -> float:
        return self.accountant.get_epsilon(self.delta) if self.accountant.num_releases else 0.0

    def state_dict(self) -> dict:
        return self.accountant.state_dict()
