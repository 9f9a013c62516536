"""The image-feature centre of a fully frozen image tower, released once per site with the
Gaussian mechanism (Dwork & Roth 2014, "The Algorithmic Foundations of Differential Privacy",
§3.5): every privacy unit contributes the mean of its images' L2-normalised tower features (a
vector of norm <= 1, so adding or removing a unit moves the sum by at most 1), the sum gets
N(0, σ² I) noise and is divided by the number of units N (public, as the DP-SGD sampling plan
treats it). It is accounted in the site's ledger as one Gaussian step at sampling rate 1,
composed with the site's DP-SGD steps, and the DP-SGD noise is calibrated for the two together.

Why: the pooled features of a pretrained tower share one dominant direction; batch centring
removes it but couples examples, Opacus' GroupNorm does not remove it (zero-shot ACA on ODIR
val.csv 0.33 vs 0.46, docs/real_data.md), and a centre estimated once is exact for a frozen
tower. Under FedAvg the sites' releases are averaged with the weights (post-processing), and a
site that receives a centred global model releases nothing.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.nn.functional as F

from shared_model.data.dataset import load_slices
from shared_model.data.manifest import Record
from shared_model.data.preprocess import to_model_input
from shared_model.data.readers import ImageReadError
from shared_model.model.feature_centring import FixedCentring
from shared_model.privacy.units import secret_generator

log = logging.getLogger(__name__)

BATCH = 64


def uses_released_centre(model: torch.nn.Module) -> bool:
    """Whether the model's image features are centred on a released centre (DP-SGD, frozen tower)."""
    return isinstance(getattr(model, "image_norm", None), FixedCentring)


def centre_pending(model: torch.nn.Module) -> bool:
    """Whether the image centre still has to be released before the first DP-SGD step."""
    return uses_released_centre(model) and float(model.image_norm.calibrated) <= 0


@torch.no_grad()
def unit_feature_sum(model: torch.nn.Module, records: list[Record], record_units: list[int], image_size: int,
                     device: torch.device) -> torch.Tensor:
    """Σ over units of the mean of the unit's L2-normalised tower features ([width]): each image
    weighs 1 / (its unit's record count), so each unit adds a vector of norm <= 1. An unreadable
    image is left out (its unit then adds less)."""
    model.eval()
    counts = Counter(record_units)
    total = torch.zeros(model.visual.width, device=device)
    pending: list[tuple[float, torch.Tensor]] = []

    def flush() -> None:
        if pending:
            imgs = to_model_input(torch.stack([img for _, img in pending]).to(device), model.input_norm)
            features = F.normalize(model.tower_features(imgs).float(), dim=-1)
            weights = torch.tensor([w for w, _ in pending], device=device)
            total.add_((weights[:, None] * features).sum(0))
            pending.clear()

    for record, unit in zip(records, record_units):
        try:
            frames = load_slices(record, image_size)
        except ImageReadError as exc:
            log.warning("unreadable image left out of the feature centre: %s", exc)
            continue
        pending.append((1.0 / counts[unit], frames[len(frames) // 2]))
        if len(pending) == BATCH:
            flush()
    flush()
    return total


def release_image_centre(model: torch.nn.Module, records: list[Record], record_units: list[int], units: int,
                         noise_multiplier: float, image_size: int, device: torch.device) -> None:
    """Set ``model.image_norm``'s centre to the noised mean of unit features (see the module)."""
    total = unit_feature_sum(model, records, record_units, image_size, device)
    noise = torch.normal(0.0, noise_multiplier, total.shape, generator=secret_generator(), device="cpu")
    model.image_norm.set_centre((total + noise.to(device)) / units)
