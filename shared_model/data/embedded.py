"""The embedded phantom data set as a configured data source: generated at ``phantom.root`` when
absent, reused when it matches the configuration, refused (never overwritten) when it does not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from shared_model.config import PhantomDataConfig
from shared_model.data.phantom import PhantomSpec, generate_phantom
from shared_model.data.phantom.generate import MARKER_FILE

log = logging.getLogger(__name__)


def phantom_spec(cfg: PhantomDataConfig) -> PhantomSpec:
    """The generator spec a phantom config stands for (OCT volumes as the spec's defaults)."""
    return PhantomSpec(n_sites=cfg.sites, images_per_site=cfg.images_per_site, heldout_images=cfg.heldout_images,
                       image_size=cfg.image_size, seed=cfg.seed)


def ensure_phantom(cfg: PhantomDataConfig, progress: bool = True) -> Path:
    """Make sure ``cfg.root`` holds the complete phantom described by ``cfg``; returns the folder."""
    root = Path(cfg.root)
    marker = root / MARKER_FILE
    spec = phantom_spec(cfg)
    if marker.is_file():
        meta = json.loads(marker.read_text())
        found = meta.get("spec", {})
        wanted = {"n_sites": spec.n_sites, "images_per_site": spec.images_per_site,
                  "heldout_images": spec.heldout_images, "image_size": spec.image_size,
                  "seed": spec.seed, "volume_slices": spec.volume_slices,
                  "volume_format": spec.volume_format}
        differs = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        if meta.get("status") == "complete" and not differs:
            return root
        if differs:
            raise ValueError(f"{marker}: the phantom there was generated with "
                             + ", ".join(f"{k}={a} (config wants {b})" for k, (a, b) in differs.items())
                             + "; set phantom.root to another folder or delete this one")
        log.warning("%s: incomplete phantom (interrupted generation); generating it again", root)
    log.info("generating the phantom data set into %s", root)
    generate_phantom(spec, root, progress=progress)
    return root
