"""Which manifests each simulated site of a federation trains on: ``federation.site_manifests``
(one entry per site, in order, globs expanded; an entry may name several manifests of one site
separated by commas, as a deployed SuperNode's ``manifest`` does) or, by default, the phantom's
``site_k`` folders: every ``data.manifests`` pattern with ``site_*`` in it, taken for ``site_k``
(so ``data=phantom_volumes`` gives each site its images and its OCT volumes). Coordinator and
sites both read it, so they agree on the count."""

from __future__ import annotations

from pathlib import Path

from shared_model.config import FederationAppConfig
from shared_model.data.manifest import expand_manifest_paths

PHANTOM_SITE = "site_*"


def simulated_site_manifests(cfg: FederationAppConfig) -> list[list[str]]:
    """The manifest paths of each simulated site."""
    if cfg.federation.site_manifests:
        sites = []
        for entry in cfg.federation.site_manifests:
            if "," in entry:
                sites.append([part.strip() for part in entry.split(",") if part.strip()])
            else:
                sites.extend([str(p)] for p in expand_manifest_paths([entry]))
        return sites
    patterns = [p for p in cfg.data.manifests if PHANTOM_SITE in p]
    root = Path(cfg.phantom.root)
    return [[p.replace(PHANTOM_SITE, f"site_{k}") for p in patterns] or [str(root / f"site_{k}" / "manifest.csv")]
            for k in range(cfg.federation.sites)]
