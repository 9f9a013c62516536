"""The DP-SGD step every private trainer takes (Abadi et al. 2016, "Deep Learning with
Differential Privacy"): Poisson-sampled privacy units, each unit's gradient clipped to C by the
plan's :class:`~shared_model.privacy.clipping.Clipper`, Gaussian noise of std σ·C added to the
clipped sum (σ, C and the generator those of Opacus' ``DPOptimizer``, built once, here), and the
result divided by the expected batch size q·N, whatever the batch drawn. The sampling and the
noise come from secret generators (:func:`~shared_model.privacy.units.secret_generator`). Used
by the CLIP trainer (``dp_trainer.py``) and the synthetic-corpus generator (``synthetic/training.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

import torch
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import Sampler

from shared_model.privacy.clipping import make_clipper
from shared_model.privacy.plan import DPPlan
from shared_model.privacy.units import PoissonUnitSampler, secret_generator


class PoissonBatches(Sampler):
    """Endless Poisson-sampled batches of ``(index, sample seed)``; seeds come from the secret generator."""

    def __init__(self, sampler: PoissonUnitSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            indices = self.sampler.draw()
            seeds = torch.randint(0, 2 ** 62, (len(indices),), generator=self.sampler.generator).tolist()
            yield list(zip(indices, seeds))


class DPStep:
    """DP-SGD around ``optimizer`` for ``model``'s records (``record_units``: each record's unit).

    A step: :meth:`zero_grad`, the forward pass inside :meth:`forward`, ``backward()`` on the
    batch-mean loss, :meth:`noise` (the private gradient is then in ``p.grad``), and the plain
    ``optimizer.step()``; data-independent terms (FedProx's pull) may be added in between.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, plan: DPPlan, record_units: list[int],
                 device: torch.device):
        self.sampler = PoissonUnitSampler(record_units, plan.sample_rate, secret_generator())
        self.units = torch.tensor(record_units, dtype=torch.long)
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=plan.noise_multiplier,
                                     max_grad_norm=plan.max_grad_norm,
                                     expected_batch_size=self.sampler.sample_rate * self.sampler.num_units,
                                     loss_reduction="mean", generator=secret_generator(device))
        self.clipper = make_clipper(plan.clipping, model, self.optimizer)
        # Torch draws CPU Gaussians on one thread (~3 ns each: a sixth of a small ViT step): on the
        # CPU the noise is drawn in slices, one thread and one secret generator each.
        extra = torch.get_num_threads() - 1 if torch.device(device).type == "cpu" else 0
        self.generators = [self.optimizer.generator, *(secret_generator() for _ in range(extra))]
        self.pool = ThreadPoolExecutor(len(self.generators)) if extra else None

    def batches(self) -> PoissonBatches:
        """The batch sampler of a DataLoader: Poisson batches of record indices."""
        return PoissonBatches(self.sampler)

    def zero_grad(self) -> None:
        """Clear gradients, per-image gradients, clipped sums and the clipper's state."""
        self.optimizer.zero_grad(set_to_none=True)
        self.clipper.reset()

    def forward(self) -> AbstractContextManager[None]:
        """The context of the step's forward pass (the clipper's)."""
        return self.clipper.forward()

    def noise(self, indices: list[int]) -> None:
        """After ``backward()`` on the batch of records ``indices`` (none: an empty Poisson batch,
        a pure-noise step the accountant counts): ``p.grad`` = (clipped per-unit sum + N(0, σ²C²))
        / q·N for every parameter."""
        if len(indices):
            self.clipper.clip_and_sum(self.units[indices], len(indices))
        else:
            self.clipper.empty_step()
        # Opacus' add_noise, every parameter's noise drawn at once and the gradients kept as views
        # of it, then divided by q·N (not Opacus' scale_grad: it counts accumulated per-image
        # gradients, which ghost clipping never forms).
        params = self.optimizer.params
        sizes = [p.numel() for p in params]
        flat = torch.empty(sum(sizes), dtype=params[0].dtype, device=params[0].device)
        std = self.optimizer.noise_multiplier * self.optimizer.max_grad_norm
        if self.pool is None:
            flat.normal_(0.0, std, generator=self.generators[0])
        else:
            list(self.pool.map(lambda part, generator: part.normal_(0.0, std, generator=generator),
                               flat.chunk(len(self.generators)), self.generators))
        for p, noise in zip(params, flat.split(sizes)):
            p.grad = noise.view_as(p).add_(p.summed_grad)
        flat.div_(self.optimizer.expected_batch_size)

    def close(self) -> None:
        """Take the clipper's hooks off the model and drop the clipped sums: without this, hooks tie
        the model and the clipper in a reference cycle that holds their tensors until a full
        garbage collection. Also ends the noise threads."""
        self.clipper.close()
        if self.pool is not None:
            self.pool.shutdown()
        for p in self.optimizer.params:
            p.summed_grad = None
