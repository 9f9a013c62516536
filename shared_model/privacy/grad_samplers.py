"""Opacus per-sample gradient rules for our own leaf modules (registered on import).

A :class:`LearnedToken` (class or mask token) is broadcast to every example: example n's
gradient is the sum of the backpropagated gradient over the positions it fills. Opacus'
functorch fallback would re-run the module with its first input only and lose ``count``.
"""

from __future__ import annotations

import torch
from opacus.grad_sample.utils import register_grad_sampler

from shared_model.model.tokens import LearnedToken


@register_grad_sampler(LearnedToken)
def learned_token_grad_sample(layer: LearnedToken, activations: list[torch.Tensor],
                              backprops: torch.Tensor) -> dict[torch.nn.Parameter, torch.Tensor]:
    """backprops: [N, count, dim] -> per-sample gradient [N, 1, 1, dim] of ``layer.token``."""
    return {layer.token: backprops.sum(dim=1)[:, None, None, :].to(layer.token.dtype)}
