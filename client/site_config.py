"""Which site a ClientApp is, from Flower's node config: a deployed SuperNode names its own
manifest(s) and state folder (``--node-config 'site-name="eye-clinic" manifest="/data/site.csv"'``);
a simulated one has a ``partition-id`` and takes the run's site list (or the phantom site)."""

from __future__ import annotations

from pathlib import Path

from shared_model.config import FederationAppConfig
from shared_model.data.sites import simulated_site_manifests
from shared_model.federated.site import Site

NODE_KEYS = ("site-name", "manifest", "state-dir", "device")


def site_from_node_config(node_config: dict, cfg: FederationAppConfig) -> Site:
    """The :class:`Site` this node stands for; a clear error when the node config is incomplete."""
    if "manifest" in node_config:
        name = str(node_config.get("site-name") or Path(str(node_config["manifest"])).parent.name)
        manifests = [part.strip() for part in str(node_config["manifest"]).split(",") if part.strip()]
        state_dir = Path(str(node_config.get("state-dir") or Path.home() / ".retinafl" / "sites" / name))
        return Site(name, manifests, state_dir, str(node_config.get("device", cfg.train.device)))
    if "partition-id" in node_config:
        index = int(node_config["partition-id"])
        manifests = simulated_site_manifests(cfg)
        if index >= len(manifests):
            raise ValueError(f"simulated site {index} has no manifest: {len(manifests)} configured "
                             "(federation.site_manifests / federation.sites)")
        name = f"site_{index}"
        return Site(name, manifests[index], Path(cfg.run_dir) / "sites" / name, cfg.train.device)
    raise ValueError(f"node config {dict(node_config)} names no site: give manifest=\"/path/site.csv\" "
                     "(and site-name, state-dir, device) to the SuperNode")
