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

    @torch.no_grad()
    def add_gradient(self, model: nn.Module) -> None:
        """Add the term's gradient ``mu * (w - w_global)`` to ``p.grad`` directly. DP-SGD uses
        this after noising: the term reads no data, so adding it outside the mechanism is
        post-processing and costs no privacy."""
        for name, p in model.named_parameters():
            if p.requires_grad and p.grad is not None:
                p.grad.add_(p - self.anchor[name], alpha=self.mu)
