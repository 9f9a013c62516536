"""Model checkpoints: ``model.safetensors`` + ``config.json`` (architecture, our version, weights hash).

Files are written to temporary names and renamed into place, config last, so a crash never
leaves a config that points to half-written weights; the SHA-256 in the config catches a
truncated or swapped weights file at load time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

import shared_model
from shared_model.atomic_files import atomic_path, write_json_atomic
from shared_model.config import ModelConfig
from shared_model.file_digest import sha256_file
from shared_model.model.build import build_model
from shared_model.model.retina_clip import RetinaCLIP
from shared_model.model.state_dicts import CheckpointError, load_state_dict_checked, read_state_dict

FORMAT = "retinafl-checkpoint/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def weights_nbytes(model: torch.nn.Module) -> int:
    """Bytes of the weights file :func:`save_checkpoint` writes for ``model`` (every state-dict tensor)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def save_checkpoint(model: RetinaCLIP, cfg: ModelConfig, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Save weights and config into ``out_dir`` (created if needed); returns the folder."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        digest = sha256_file(tmp)
    write_json_atomic(out / CONFIG, {
        "format": FORMAT,
        "retinafl_version": shared_model.__version__,
        "torch_version": torch.__version__,
        "model": asdict(cfg),
        "weights_sha256": digest,
        "extra": extra or {},
    })
    return out


def read_checkpoint_config(ckpt_dir: str | Path) -> tuple[ModelConfig, dict]:
    """Parse ``config.json`` of a checkpoint into a typed ModelConfig (+ the whole metadata)."""
    path = Path(ckpt_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {ckpt_dir} is not a RetinaFL checkpoint folder")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        schema = OmegaConf.structured(ModelConfig)
        cfg = OmegaConf.to_object(OmegaConf.merge(schema, meta["model"]))
    except Exception as exc:
        raise CheckpointError(f"{path}: field 'model' does not describe a model ({exc})") from exc
    return cfg, meta


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RetinaCLIP, ModelConfig]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` onto ``device``."""
    ckpt_dir = Path(ckpt_dir)
    cfg, meta = read_checkpoint_config(ckpt_dir)
    weights = ckpt_dir / WEIGHTS
    if weights.is_file() and sha256_file(weights) != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights}: SHA-256 differs from {ckpt_dir / CONFIG} (truncated or replaced file)")
    model = build_model(cfg, pretrained=False)
    load_weights(model, weights)
    return model.to(device), cfg


def load_weights(model: RetinaCLIP, weights: str | Path) -> None:
    """Load a weights file into an existing model, failing clearly on an architecture mismatch."""
    load_state_dict_checked(model, read_state_dict(weights), str(weights))
