"""The FedProx proximal term (Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020): ``mu / 2 * ||w - w_global||^2`` over the trainable parameters, which keeps a site's
local steps near the round's global weights when site data differ."""

from __future__ import annotations

import torch
from torch import nn


class ProximalTerm:
    """Anchored at the model's trainable weights when constructed (the round's global weights)."""

    def __init__(self, model: nn.Module, mu: float):
        if mu < 0:
            raise ValueError(f"proximal mu must be >= 0, got {mu}")
        self.mu = mu
        self.anchor = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def __call__(self, model: nn.Module) -> torch.Tensor:
        squared = [((p - self.anchor[name]) ** 2).sum() for name, p in model.named_parameters() if p.requires_grad]
        return 0.5 * self.mu * torch.stack(squared).sum()
