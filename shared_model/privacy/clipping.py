"""Per-unit gradient clipping for DP-SGD (Abadi et al. 2016), behind one interface: every trainer
under ``privacy.mode=dp-sgd`` (the CLIP trainer, the generator, any new tower) resets its clipper
before a step, runs the forward pass inside :meth:`Clipper.forward`, and after ``backward()``
asks for the clipped sum Σ_u min(1, C/‖g_u‖)·g_u over the batch's privacy units in every
parameter's ``summed_grad``, where the DP step adds the noise (``dp_step.py``).

Two implementations, one result: :class:`~shared_model.privacy.ghost_clipping.GhostClipper`
(ghost norms and book-keeping, Bu et al. 2023: per-image gradients only where they are cheaper) and
:class:`HooksClipper` (Opacus' ``GradSampleModule``: one gradient per image, summed per unit,
clipped by Opacus' own ``DPOptimizer.clip_and_accumulate``). :func:`make_clipper` is the one
place that chooses between them.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from shared_model.privacy import grad_samplers  # noqa: F401  (registers the LearnedToken rule)
from shared_model.privacy.ghost_clipping import GhostClipper, unsupported_modules

log = logging.getLogger(__name__)

# Expected: class/mask tokens take a detached input, so their Opacus hooks fire on the output gradient.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                        "to module outputs since no inputs require gradients")

CLIPPERS = ("ghost", "hooks", "functorch")  # functorch: Opacus' vmap of every layer, timed by bench/dp_overhead.py


class Clipper(Protocol):
    """What a DP-SGD step needs from per-unit clipping."""

    def reset(self) -> None:
        """Forget what the previous forward pass left behind (before a new one)."""

    def forward(self) -> AbstractContextManager[None]:
        """The context the step's forward pass runs in."""

    def clip_and_sum(self, units: torch.Tensor, batch_size: int) -> None:
        """After ``loss.backward()`` on the batch mean: the clipped per-unit sum into every
        parameter's ``summed_grad``; ``units``: each image's unit, ``batch_size``: the images."""

    def empty_step(self) -> None:
        """An empty Poisson batch: zero ``summed_grad`` (the step is pure noise, and is counted)."""

    def close(self) -> None:
        """Take every hook off the model and drop what the clipper attached to it."""


def sum_per_unit(optimizer: DPOptimizer, units: torch.Tensor) -> None:
    """Replace each parameter's per-image gradients with per-unit sums (one row per distinct unit
    of the batch), so Opacus clips per unit. ``units``: the unit of every image row.

    The rows of a unit's later images are added in place into its first image's row and then
    zeroed: a zero row has norm 0, so it adds nothing after clipping, and the noise depends on
    the expected batch size only. No buffer of the per-sample size is allocated, and there is
    nothing to do when every image is its own unit (per-image units, one image per patient)."""
    _, slot = torch.unique(units, return_inverse=True)
    count = int(slot.max()) + 1
    if count == len(units):
        return
    position = torch.arange(len(units))
    first = torch.full((count,), len(units)).scatter_reduce_(0, slot, position, "amin")
    later = position[position != first[slot]]
    into = first[slot[later]]
    for p in optimizer.params:
        per_image = optimizer._get_flat_grad_sample(p)
        dev = per_image.device
        per_image.index_add_(0, into.to(dev), per_image[later.to(dev)])
        per_image.index_fill_(0, later.to(dev), 0.0)
        p.grad_sample = per_image


class HooksClipper:
    """Opacus' per-image gradients (``GradSampleModule``: per-layer rules, or with ``functorch``
    a vmap of every layer), summed per unit, clipped by ``optimizer`` (a ``DPOptimizer``, whose
    parameters and C it uses)."""

    def __init__(self, model: nn.Module, optimizer: DPOptimizer, functorch: bool = False):
        self.model, self.optimizer = model, optimizer
        self.grad_module = GradSampleModule(model, batch_first=True, loss_reduction="mean", force_functorch=functorch)

    def reset(self) -> None:
        """Drop activations a forward call left without its backward pass (Opacus keeps them)."""
        for module in self.model.modules():
            if getattr(module, "activations", None):
                module.activations.clear()

    def forward(self) -> AbstractContextManager[None]:
        """Opacus' hooks see the ordinary forward pass."""
        return nullcontext()

    def clip_and_sum(self, units: torch.Tensor, batch_size: int) -> None:
        """Per-unit sums of the per-image gradients, clipped and summed by Opacus (the hooks
        already undid the batch mean: ``batch_size`` is not needed)."""
        sum_per_unit(self.optimizer, units)
        self.optimizer.clip_and_accumulate()

    def empty_step(self) -> None:
        """Zero ``summed_grad`` for every parameter of the optimizer."""
        for p in self.optimizer.params:
            p.summed_grad = torch.zeros_like(p)

    def close(self) -> None:
        """Opacus' cleanup: hooks removed, per-sample attributes deleted from the parameters."""
        self.reset()
        self.grad_module.to_standard_module()


def make_clipper(kind: str, model: nn.Module, optimizer: DPOptimizer) -> Clipper:
    """The clipper for ``privacy.clipping`` (``kind``) around ``model``, clipping to the C of
    ``optimizer`` (Opacus' ``DPOptimizer``). ``ghost`` falls back to Opacus' hooks for a model
    with trainable modules ghost clipping cannot handle (the generator's UNet and its GroupNorms):
    the same clipped sum, at the cost of per-image gradients."""
    if kind not in CLIPPERS:
        raise ValueError(f"clipping must be one of {CLIPPERS}, got {kind!r}")
    if kind == "ghost":
        bad = unsupported_modules(model)
        if not bad:
            return GhostClipper(model, optimizer.max_grad_norm)
        log.info("ghost clipping cannot handle %d trainable modules (%s%s): Opacus' per-image hooks clip instead",
                 len(bad), ", ".join(bad[:3]), ", ..." if len(bad) > 3 else "")
    return HooksClipper(model, optimizer, functorch=kind == "functorch")
