"""The conditional DDPM generator (Ho et al. 2020): diffusers' ``UNet2DModel`` predicts the noise;
the condition (label set + modality) is mapped by a linear layer into the UNet's class embedding
(``class_embed_type="identity"``), and a zero condition means "unconditional", which classifier-
free guidance (Ho & Salimans 2022) contrasts with the conditional prediction at sampling time."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from shared_model.atomic_files import write_text_atomic
from shared_model.config import GeneratorConfig
from shared_model.file_digest import sha256_file
from synthetic.conditioning import Conditioning

GENERATOR_DIR = "generator"  # inside a generator run folder
GENERATOR_FILE = "generator.json"
WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
FORMAT = "retinafl-generator/1"


class GeneratorError(ValueError):
    """A generator folder is missing, corrupt or does not fit its description."""


class ConditionalUNet(nn.Module):
    """Noise prediction eps(x_t, t, condition)."""

    def __init__(self, cfg: GeneratorConfig, conditioning: Conditioning):
        super().__init__()
        from diffusers import UNet2DModel

        levels = len(cfg.block_channels)
        if not 0 <= cfg.attention_levels <= levels:
            raise ValueError(f"generator.attention_levels must be in [0, {levels}], got {cfg.attention_levels}")
        plain = levels - cfg.attention_levels
        self.cfg = cfg
        self.conditioning = conditioning
        self.unet = UNet2DModel(
            sample_size=cfg.image_size, in_channels=3, out_channels=3, layers_per_block=cfg.layers_per_block,
            block_out_channels=tuple(cfg.block_channels),
            down_block_types=("DownBlock2D",) * plain + ("AttnDownBlock2D",) * cfg.attention_levels,
            up_block_types=("AttnUpBlock2D",) * cfg.attention_levels + ("UpBlock2D",) * plain,
            class_embed_type="identity", norm_num_groups=min(32, cfg.block_channels[0]))
        embed_dim = cfg.block_channels[0] * 4
        self.condition_embed = nn.Linear(conditioning.size, embed_dim)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """noisy: [N, 3, S, S] in [-1, 1] scale; timesteps: [N]; condition: [N, K + M] -> noise [N, 3, S, S]."""
        return self.unet(noisy, timesteps, class_labels=self.condition_embed(condition)).sample


def federated_generator(cfg: GeneratorConfig, private: bool) -> ConditionalUNet:
    """The generator a federation trains: the shared vocabulary, Opacus-validated under DP-SGD."""
    model = ConditionalUNet(cfg, Conditioning.federated(cfg))
    if private:
        from shared_model.privacy.model_fixes import make_opacus_compatible

        model, _ = make_opacus_compatible(model)
    return model


def save_generator(model: ConditionalUNet, ema_state: dict[str, torch.Tensor] | None, folder: Path,
                   extra: dict | None = None) -> list[str]:
    """Weights (and EMA weights) as safetensors plus a JSON description with their SHA-256."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    files = [WEIGHTS]
    if ema_state is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(folder / EMA_WEIGHTS))
        files.append(EMA_WEIGHTS)
    meta = {"format": FORMAT, "generator": asdict(model.cfg), "categories": list(model.conditioning.categories),
            "modalities": list(model.conditioning.modalities), "extra": extra or {},
            "sha256": {name: sha256_file(folder / name) for name in files}}
    write_text_atomic(folder / GENERATOR_FILE, json.dumps(meta, indent=1) + "\n")
    return [*files, GENERATOR_FILE]


def load_generator(folder: str | Path, use_ema: bool = True) -> tuple[ConditionalUNet, dict]:
    """Rebuild a saved generator (EMA weights when present and asked for); checks hashes."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / GENERATOR_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GeneratorError(f"{path}: not a generator description ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise GeneratorError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    name = EMA_WEIGHTS if use_ema and EMA_WEIGHTS in meta["sha256"] else WEIGHTS
    if sha256_file(folder / name) != meta["sha256"][name]:
        raise GeneratorError(f"{folder / name}: SHA-256 differs from {path} (corrupt or replaced)")
    model = ConditionalUNet(GeneratorConfig(**meta["generator"]),
                            Conditioning(tuple(meta["categories"]), tuple(meta["modalities"])))
    model.load_state_dict(load_file(str(folder / name)))
    return model, meta
