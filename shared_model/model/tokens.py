"""Single-parameter leaf modules (class/mask tokens, temperature).

Keeping each free parameter in its own leaf module matters for Opacus: a module
that owns a parameter *and* has children is handed whole to the functorch
fallback, which only passes its first input (see DESIGN.md, Opacus facts).
"""

import math

import torch
from torch import nn


class LearnedToken(nn.Module):
    """A learnable token of shape (1, 1, dim) broadcast to a batch."""

    def __init__(self, dim: int, init_std: float = 0.02):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.token, std=init_std)

    def forward(self, like: torch.Tensor, *, count: int = 1) -> torch.Tensor:
        """Return the token expanded to ``(like.shape[0], count, dim)`` in ``like``'s dtype.

        Only the shape and dtype of ``like`` are read: pass it detached, so the module's backward
        hook (Opacus' per-sample gradient) fires on the output's gradient, and ``count`` by
        keyword, since Opacus records every positional input as an activation.
        """
        return self.token.to(like.dtype).expand(like.shape[0], count, -1)


class Temperature(nn.Module):
    """CLIP's learnable logit scale: stored as log(1/T), used clamped to [0, ln 100] (Radford et al. 2021)."""

    max_log_scale = math.log(100.0)

    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self) -> torch.Tensor:
        """The multiplicative logit scale exp(clamp(log_scale, 0, ln 100))."""
        return self.log_scale.clamp(0.0, self.max_log_scale).exp()
