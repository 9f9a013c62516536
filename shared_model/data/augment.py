"""Training augmentations drawn from an explicit ``torch.Generator``.

torchvision's random transforms read the global RNG, which makes a resumed run or a
different number of loader workers see different images; drawing every parameter from a
per-sample generator keeps augmentation reproducible. The operations themselves are
torchvision's functional transforms.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def illumination_field(size: int, gen: torch.Generator) -> torch.Tensor:
    """[1, S, S] multiplicative field: a linear brightness gradient times a radial vignette, the
    uneven illumination of fundus cameras (strength, direction and fall-off drawn from ``gen``)."""
    coords = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = _uniform(gen, 0.0, 2 * torch.pi)
    gradient = 1.0 + _uniform(gen, 0.0, 0.45) * (xx * torch.cos(torch.tensor(angle)) + yy * torch.sin(torch.tensor(angle)))
    vignette = 1.0 - _uniform(gen, 0.0, 0.55) * (xx ** 2 + yy ** 2) / 2
    return (gradient * vignette).clamp(min=0.0).unsqueeze(0)


def augment(img: torch.Tensor, gen: torch.Generator, colour: bool = True) -> torch.Tensor:
    """[3, S, S] in [0, 1] -> randomly cropped, flipped, rotated and colour-jittered [3, S, S].

    Geometry is mild on purpose (lesions are small, so crops keep >= 80 % of the area); photometric
    changes are strong (per-channel gain, gamma, uneven illumination, blur) because sites differ
    most in camera colour, illumination and focus. Colour changes are skipped for grey modalities such as OCT (``colour=False``).
    """
    _, size, _ = img.shape
    scale, ratio = _uniform(gen, 0.8, 1.0), _uniform(gen, 0.9, 1.1)
    h = min(size, round(size * (scale / ratio) ** 0.5))
    w = min(size, round(size * (scale * ratio) ** 0.5))
    top = int(torch.randint(0, size - h + 1, (), generator=gen))
    left = int(torch.randint(0, size - w + 1, (), generator=gen))
    img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    if float(torch.rand((), generator=gen)) < 0.5:
        img = TF.horizontal_flip(img)
    img = TF.rotate(img, _uniform(gen, -15.0, 15.0))
    img = TF.adjust_brightness(img, _uniform(gen, 0.8, 1.2))
    img = TF.adjust_contrast(img, _uniform(gen, 0.8, 1.2))
    img = TF.adjust_gamma(img, _uniform(gen, 0.8, 1.25))
    if colour:
        # Per-channel gain: cameras differ in white balance far more than hue jitter covers.
        gains = torch.empty(3, 1, 1).uniform_(0.75, 1.3, generator=gen)
        img = TF.adjust_saturation((img * gains).clamp(0.0, 1.0), _uniform(gen, 0.7, 1.3))
        img = TF.adjust_hue(img, _uniform(gen, -0.03, 0.03))
    if colour and float(torch.rand((), generator=gen)) < 0.5:
        img = img * illumination_field(size, gen)
    if float(torch.rand((), generator=gen)) < 0.5:  # defocus and compression blur
        sigma = _uniform(gen, 0.1, 1.2) * size / 64
        img = TF.gaussian_blur(img, [2 * round(2 * sigma) + 1] * 2, [sigma, sigma])
    return img.clamp(0.0, 1.0)
