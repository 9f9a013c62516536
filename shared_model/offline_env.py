"""The environment every Flower process of ours runs with, at the coordinator and at sites:
air-gapped (no runtime dependency installation, no update check, no telemetry, no Hugging Face
hub), with its own ``FLWR_HOME``, and this interpreter's bin folder first on PATH because Flower
starts its helper processes (flower-superexec, flwr-serverapp, flwr-clientapp) by bare name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def offline_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of this process's environment made safe for Flower processes (see module doc)."""
    env = dict(os.environ)
    env.update(OFFLINE)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env
