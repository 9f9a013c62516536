"""Privacy units and their Poisson sampling (Abadi et al. 2016; the sampling the accountants model).

With ``unit=patient`` all images of one patient at one site form a single record, whichever of
the site's manifests lists them (a patient with fundus photographs in one manifest and OCT
volumes in another is one unit, not two): the patient is sampled or not, and the per-patient
gradient (the sum over that patient's images) is clipped, so ε bounds what the update reveals
about a whole patient. This needs one patient id per patient across a site's manifests.
``unit=image`` treats every image as its own record, which says nothing about patients with
several images.
"""

from __future__ import annotations

import os

import torch

from shared_model.data.manifest import Record

UNITS = ("patient", "image")


def unit_ids(records: list[Record], unit: str) -> list[int]:
    """Privacy-unit index of every record (0..N-1, in order of first appearance)."""
    if unit not in UNITS:
        raise ValueError(f"privacy.unit must be one of {UNITS}, got {unit!r}")
    if unit == "image":
        return list(range(len(records)))
    index: dict[str, int] = {}
    return [index.setdefault(r.patient_id, len(index)) for r in records]


def secret_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded from the OS entropy pool (``os.urandom``).

    The sampling and the noise must be unpredictable to whoever sees the update: seeding them
    from the run's seed (which the coordinator knows) would let it subtract the noise. Opacus'
    secure mode needs torchcsprng, which has no build for our torch, so this is torch's
    Mersenne Twister with an unpredictable seed — not a cryptographically secure RNG; the
    privacy report says so.
    """
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))


RNG_DESCRIPTION = ("torch.Generator (Mersenne Twister) seeded from os.urandom for every round; "
                   "not a CSPRNG (Opacus secure_mode needs torchcsprng, unavailable for torch 2.14)")


class PoissonUnitSampler:
    """Each step, every unit joins the batch independently with probability ``sample_rate``;
    yields the record indices of the sampled units (possibly none)."""

    def __init__(self, record_units: list[int], sample_rate: float, generator: torch.Generator):
        if not 0 < sample_rate <= 1:
            raise ValueError(f"privacy sample rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = sample_rate
        self.generator = generator
        self.units = torch.tensor(record_units, dtype=torch.long)
        self.num_units = int(self.units.max()) + 1 if len(record_units) else 0

    def draw(self) -> list[int]:
        """Record indices of one Poisson-sampled batch of units."""
        chosen = torch.rand(self.num_units, generator=self.generator) < self.sample_rate
        return torch.nonzero(chosen[self.units]).flatten().tolist()
