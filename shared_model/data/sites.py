"""Which manifest each simulated site of a federation trains on: the manifests listed in
``federation.site_manifests`` (globs expanded, one site each, in order) or, by default, the
phantom's ``site_k`` folders. Coordinator and sites both read it, so they agree on the count."""

from __future__ import annotations

from pathlib import Path

from shared_model.config import FederationAppConfig
from shared_model.data.manifest import expand_manifest_paths


def simulated_site_manifests(cfg: FederationAppConfig) -> list[str]:
    """One manifest path per simulated site."""
    if cfg.federation.site_manifests:
        return [str(p) for p in expand_manifest_paths(cfg.federation.site_manifests)]
    return [str(Path(cfg.phantom.root) / f"site_{k}" / "manifest.csv") for k in range(cfg.federation.sites)]
