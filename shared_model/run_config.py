"""A resolved application config as a flat map of scalars (Flower's run config) and back.

Flower's run config holds only bool/int/float/str values under keys listed in
``[tool.flwr.app.config]``. Every leaf of the typed config becomes one dotted key
(``train.lr``, ``model.image.width``); values that are not scalars (lists, ``None``) travel as
JSON strings with a ``json:`` prefix. Decoding merges the map onto the typed schema, so an
unknown key or a wrong type fails naming the key: a run can carry values, never code.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import OmegaConf

JSON_PREFIX = "json:"
SCALARS = (bool, int, float, str)


def flatten_config(cfg: Any) -> dict[str, bool | int | float | str]:
    """Typed config (dataclass instance) -> ``{dotted.key: scalar}``."""
    plain = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    flat: dict[str, bool | int | float | str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}")
            return
        flat[prefix] = node if isinstance(node, SCALARS) else JSON_PREFIX + json.dumps(node)

    walk(plain, "")
    return flat


def unflatten_config(flat: dict[str, Any], schema: type) -> Any:
    """``{dotted.key: scalar}`` -> typed config of class ``schema`` (unknown keys and bad types fail)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, str) and value.startswith(JSON_PREFIX):
            try:
                value = json.loads(value[len(JSON_PREFIX):])
            except json.JSONDecodeError as exc:
                raise ValueError(f"run config key {key!r}: invalid JSON value ({exc})") from exc
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    merged = OmegaConf.merge(OmegaConf.structured(schema), nested)
    return OmegaConf.to_object(merged)
