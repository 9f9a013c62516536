"""The Flower app folder of one run: a ``pyproject.toml`` whose ``[tool.flwr.app.config]`` is the
run's whole resolved config, flattened (``shared_model.run_config``), and whose components are
our installed ServerApp and ClientApp.

Generating it per run keeps Hydra the single source of configuration: the keys Flower checks
are exactly the schema's, and their values are this run's. The folder holds no code — sites and
coordinator import ``server``/``client`` from their installed environment, and runtime
dependency installation stays disabled, so nothing is fetched when the run starts.
"""

from __future__ import annotations

from pathlib import Path

import tomli_w

from shared_model.atomic_files import write_text_atomic
from shared_model.run_config import flatten_config

SERVER_APP = "server.server_app:app"
CLIENT_APP = "client.client_app:app"


def flower_app_manifest(cfg) -> dict:
    """The pyproject table of the run's Flower app."""
    return {
        "project": {"name": "retinafl-run", "version": "1.0.0", "dependencies": [], "license": "Apache-2.0",
                    "description": "A RetinaFL federated run (generated; the code is the installed retinafl package)"},
        "tool": {"flwr": {"app": {"publisher": "retinafl",
                                  "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
                                  "config": flatten_config(cfg)}}},
    }


def write_flower_app(app_dir: Path, cfg) -> Path:
    """Write the app folder for ``cfg`` (a FederationAppConfig); returns it."""
    app_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(app_dir / "pyproject.toml", tomli_w.dumps(flower_app_manifest(cfg)))
    return app_dir
