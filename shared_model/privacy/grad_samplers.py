"""Opacus per-sample gradient rules for our own leaf modules, and one fix (registered on import).

A :class:`LearnedToken` (class or mask token) is broadcast to every example: example n's
gradient is the sum of the backpropagated gradient over the positions it fills. Opacus'
functorch fallback would re-run the module with its first input only and lose ``count``.

Opacus 1.6's ``nn.Conv2d`` rule returns wrong per-sample gradients for a channels-last input
(the CNN tower's): it gets contiguous copies.
"""

from __future__ import annotations

import torch
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn

from shared_model.model.tokens import LearnedToken


@register_grad_sampler(LearnedToken)
def learned_token_grad_sample(layer: LearnedToken, activations: list[torch.Tensor],
                              backprops: torch.Tensor) -> dict[torch.nn.Parameter, torch.Tensor]:
    """backprops: [N, count, dim] -> per-sample gradient [N, 1, 1, dim] of ``layer.token``."""
    return {layer.token: backprops.sum(dim=1)[:, None, None, :].to(layer.token.dtype)}


@register_grad_sampler(nn.Conv2d)
def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Opacus' own rule, on contiguous activations and backprops."""
    return compute_conv_grad_sample(layer, [a.contiguous() for a in activations], backprops.contiguous())
