"""Flower's message-API strategies by config name (FedAvg and FedProx aggregating with
``server.aggregation``'s streaming mean), and the server-optimizer state that must be
checkpointed with a round (FedAdam / FedYogi moments) so a resumed run continues exactly.

The config names a registry entry, never an import path: whoever submits a run cannot make the
coordinator import arbitrary code.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedMedian, FedTrimmedAvg, FedYogi, Krum, Strategy

from server.aggregation import StreamingFedAvg, StreamingFedProx, mean_of_reported
from shared_model.config import FederationConfig, StrategyConfig

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedtrimmedavg", "fedmedian", "krum")
# Attributes of Flower's FedOpt family that carry state from round to round.
STATE_ATTRIBUTES = ("m_t", "v_t")


def build_strategy(cfg: StrategyConfig, fed: FederationConfig, weighted_by_key: str = "num-examples") -> Strategy:
    """The configured Flower strategy, with the federation's quorum as its minimum node counts;
    replies are weighted by their ``weighted_by_key`` metric."""
    common = {"fraction_train": cfg.fraction_train, "fraction_evaluate": cfg.fraction_evaluate,
              "min_train_nodes": fed.min_sites, "min_evaluate_nodes": 1 if cfg.fraction_evaluate > 0 else 0,
              "min_available_nodes": fed.min_available, "weighted_by_key": weighted_by_key,
              "train_metrics_aggr_fn": mean_of_reported}
    server_opt = {"eta": cfg.server_lr, "eta_l": cfg.server_lr_local, "beta_1": cfg.beta_1, "beta_2": cfg.beta_2,
                  "tau": cfg.tau}
    builders = {
        "fedavg": lambda: StreamingFedAvg(**common),
        "fedprox": lambda: StreamingFedProx(**common, proximal_mu=cfg.proximal_mu),
        "fedadam": lambda: FedAdam(**common, **server_opt),
        "fedyogi": lambda: FedYogi(**common, **server_opt),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=cfg.trim_fraction),
        "fedmedian": lambda: FedMedian(**common),
        "krum": lambda: Krum(**common, num_malicious_nodes=cfg.byzantine_sites),
    }
    if cfg.name not in builders:
        raise ValueError(f"strategy.name={cfg.name!r} is not one of {', '.join(STRATEGIES)}")
    return builders[cfg.name]()


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """Round-to-round state of the strategy as ``{"m_t/<weight name>": array, ...}`` (empty for
    stateless strategies such as FedAvg)."""
    state = {}
    for attr in STATE_ATTRIBUTES:
        for name, value in (getattr(strategy, attr, None) or {}).items():
            state[f"{attr}/{name}"] = np.array(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Put back what :func:`strategy_state` returned; refuses state the strategy does not hold."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        attr, _, name = key.partition("/")
        if attr not in STATE_ATTRIBUTES or not hasattr(strategy, attr):
            raise ValueError(f"strategy state key {key!r} does not belong to {type(strategy).__name__}")
        grouped.setdefault(attr, {})[name] = value
    for attr, values in grouped.items():
        setattr(strategy, attr, values)
