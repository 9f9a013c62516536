"""Deterministic preprocessing: fundus field-of-view crop, aspect-preserving resize onto a
square black canvas, grey-to-RGB, then the model's input normalisation (ImageNet statistics as
MAE and timm, optionally after local-contrast normalisation of fundus images, or TF's [-1, 1]
scaling for EfficientNet-Lite)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from torchvision.transforms.v2 import functional as TF

# Bump whenever the readers or prepare_image change the pixels they produce: it invalidates every
# decoded cache (shared_model/data/decoded_cache.py).
VERSION = 1

# Modalities photographed through the pupil have a circular field of view on black.
FOV_MODALITIES = frozenset({"CFP", "FFA", "FAF", "ICGA", "UWF", "IR"})

# Per-channel (mean, std) of each input standardisation: ImageNet statistics (torchvision, MAE,
# timm's ResNets) or TF's [-1, 1] scaling (Inception, EfficientNet-Lite).
_STATS = {"imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
          "inception": (IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD)}
_STATS = {name: (torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1))
          for name, (mean, std) in _STATS.items()}


def fov_bbox(img: np.ndarray, threshold: float = 0.08, min_fraction: float = 0.01) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right) of the field of view of a fundus image [H, W, C].

    A row or column belongs to it when more than ``min_fraction`` of its pixels are brighter than
    ``threshold`` x the image's 99th-percentile luminance; returns the whole image if none is.
    """
    lum = img.mean(axis=-1)
    bright = lum > threshold * max(float(np.percentile(lum, 99)), 1e-6)
    rows = np.flatnonzero(bright.mean(axis=1) > min_fraction)
    cols = np.flatnonzero(bright.mean(axis=0) > min_fraction)
    if len(rows) == 0 or len(cols) == 0:
        return 0, img.shape[0], 0, img.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_fov(img: np.ndarray) -> np.ndarray:
    """Crop the black border around a fundus field of view."""
    top, bottom, left, right = fov_bbox(img)
    return img[top:bottom, left:right]


def square_resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] -> [C, size, size]: scale the longer side to ``size`` and centre on black."""
    c, h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    canvas = img.new_zeros(c, size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = resized.clamp(0.0, 1.0)
    return canvas


def to_tensor_rgb(img: np.ndarray) -> torch.Tensor:
    """[H, W, C] float array (C = 1 or 3) -> [3, H, W] tensor."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t


def prepare_image(img: np.ndarray, modality: str, size: int) -> torch.Tensor:
    """Decoded [H, W, C] image -> cropped (fundus modalities), squared [3, size, size] in [0, 1]."""
    if modality in FOV_MODALITIES:
        img = crop_fov(img)
    return square_resize(to_tensor_rgb(img), size)


def normalize(img: torch.Tensor, stats: str = "imagenet") -> torch.Tensor:
    """[.., 3, H, W] in [0, 1] -> standardised with the ``stats`` mean and std (see ``_STATS``)."""
    mean, std = _STATS[stats]
    return (img - mean.to(img)) / std.to(img)


INPUT_NORMS = ("imagenet", "inception", "local_contrast")


def local_contrast(images: torch.Tensor) -> torch.Tensor:
    """Local-average colour subtraction (B. Graham, Kaggle Diabetic Retinopathy Detection, 2015):
    ``0.5 + 4 * (image - Gaussian local mean)`` inside the field of view, 0.5 outside.

    It removes what differs between cameras at low spatial frequency (colour cast, brightness,
    vignetting, uneven illumination) and keeps what differs between eyes at high frequency
    (lesions, vessels). The local mean is a normalised convolution over the field of view (the
    pixels brighter than 4 % in their brightest channel), so the dark rim does not bleed into the
    border. ``images``: [N, 3, S, S] in [0, 1].
    """
    size = images.shape[-1]
    sigma = size / 30
    kernel = [2 * math.ceil(3 * sigma) + 1] * 2
    fov = (images.amax(1, keepdim=True) > 0.04).to(images)
    mean = (TF.gaussian_blur(images * fov, kernel, [sigma, sigma])
            / TF.gaussian_blur(fov, kernel, [sigma, sigma]).clamp(min=1e-3))
    return ((0.5 + 4 * (images - mean)) * fov + 0.5 * (1 - fov)).clamp(0, 1)


def to_model_input(images: torch.Tensor, input_norm: str) -> torch.Tensor:
    """[N, 3, S, S] in [0, 1] -> the model's input: with ``input_norm='local_contrast'`` first
    :func:`local_contrast` (every modality: it also cancels OCT gain and speckle-floor differences
    between devices), then ImageNet standardisation; ``inception`` scales to [-1, 1] instead."""
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"model.image.input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
    if input_norm == "local_contrast":
        return normalize(local_contrast(images))
    return normalize(images, input_norm)
