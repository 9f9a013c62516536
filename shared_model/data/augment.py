"""Training augmentations: parameters drawn per sample, applied to a whole batch at once.

The loader only draws each sample's parameters (:func:`draw_params`, from the sample's own
``torch.Generator``, so a resumed run or a different number of loader workers sees the same
images); :func:`augment_batch` then applies them to the stacked batch with a handful of
vectorised tensor operations on the training device. Per-image torchvision transforms cost more
than the tiny model's forward and backward pass on a CPU; the batched form costs a small fraction
of that and runs on the GPU when there is one.

Geometry is mild on purpose (lesions are small, so crops keep >= 80 % of the area); photometric
changes are strong (per-channel gain, gamma, uneven illumination, blur) because sites differ most
in camera colour, illumination and focus. Colour changes are skipped for grey modalities (OCT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Column of each parameter in the per-sample vector.
FIELDS = ("scale", "ratio", "top", "left", "flip", "angle", "brightness", "contrast", "gamma",
          "gain_r", "gain_g", "gain_b", "saturation", "hue", "illum_strength", "illum_angle", "vignette",
          "blur_sigma")
_COL = {name: i for i, name in enumerate(FIELDS)}
MAX_BLUR_SIGMA = 1.2  # at 64 px; scales with the image size

# RGB -> YIQ; a hue shift is a rotation of the (I, Q) chroma plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)
_GREY = torch.tensor([0.2989, 0.587, 0.114])


def draw_params(gen: torch.Generator, colour: bool) -> torch.Tensor:
    """One sample's augmentation parameters as a ``[len(FIELDS)]`` float tensor.

    ``top``/``left`` are fractions of the free margin; colour parameters are neutral when
    ``colour`` is false; ``illum_strength``/``vignette`` are 0 when no illumination field is
    drawn and ``blur_sigma`` is 0 when no blur is drawn (each happens half of the time).
    """
    r = torch.rand(len(FIELDS), generator=gen).tolist()
    u = {name: r[i] for i, name in enumerate(FIELDS)}

    def span(name: str, low: float, high: float) -> float:
        return low + (high - low) * u[name]

    coin = torch.rand(2, generator=gen).tolist()
    p = {
        "scale": span("scale", 0.8, 1.0), "ratio": span("ratio", 0.9, 1.1), "top": u["top"], "left": u["left"],
        "flip": float(u["flip"] < 0.5), "angle": span("angle", -15.0, 15.0),
        "brightness": span("brightness", 0.8, 1.2), "contrast": span("contrast", 0.8, 1.2),
        "gamma": span("gamma", 0.8, 1.25),
        # Per-channel gain: cameras differ in white balance far more than hue jitter covers.
        "gain_r": span("gain_r", 0.75, 1.3), "gain_g": span("gain_g", 0.75, 1.3), "gain_b": span("gain_b", 0.75, 1.3),
        "saturation": span("saturation", 0.7, 1.3), "hue": span("hue", -0.03, 0.03),
        "illum_strength": span("illum_strength", 0.0, 0.45), "illum_angle": span("illum_angle", 0.0, 2 * math.pi),
        "vignette": span("vignette", 0.0, 0.55),
        "blur_sigma": span("blur_sigma", 0.1, MAX_BLUR_SIGMA),
    }
    if not colour:
        p.update(gain_r=1.0, gain_g=1.0, gain_b=1.0, saturation=1.0, hue=0.0)
    if not colour or coin[0] >= 0.5:
        p.update(illum_strength=0.0, vignette=0.0)
    if coin[1] >= 0.5:
        p["blur_sigma"] = 0.0
    return torch.tensor([p[name] for name in FIELDS])


def _column(params: torch.Tensor, name: str) -> torch.Tensor:
    return params[:, _COL[name]].view(-1, 1, 1, 1)


def _geometry(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Random resized crop, horizontal flip and rotation about the centre, as one resampling."""
    n, _, size, _ = images.shape
    col = {name: params[:, _COL[name]] for name in ("scale", "ratio", "top", "left", "flip", "angle")}
    h = (size * (col["scale"] / col["ratio"]).sqrt()).round().clamp(max=size)
    w = (size * (col["scale"] * col["ratio"]).sqrt()).round().clamp(max=size)
    top, left = (col["top"] * (size - h)).floor(), (col["left"] * (size - w)).floor()
    cx, cy = (left + w / 2) / size * 2 - 1, (top + h / 2) / size * 2 - 1
    sx = (w / size) * (1 - 2 * col["flip"])
    sy = h / size
    theta = torch.deg2rad(col["angle"])
    cos, sin = theta.cos(), theta.sin()
    # Output point p samples the input at centre + diag(sx, sy) @ R(-angle) @ p.
    affine = torch.stack([torch.stack([sx * cos, sx * sin, cx], -1),
                          torch.stack([-sy * sin, sy * cos, cy], -1)], 1)
    grid = F.affine_grid(affine.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _colour(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, gamma, channel gains, saturation and hue, in torchvision's order."""
    grey = _GREY.to(images).view(1, 3, 1, 1)
    img = (images * _column(params, "brightness")).clamp(0, 1)
    mean = (img * grey).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    contrast = _column(params, "contrast")
    img = (img * contrast + mean * (1 - contrast)).clamp(0, 1)
    img = img.clamp(min=1e-8) ** _column(params, "gamma")
    gains = params[:, [_COL["gain_r"], _COL["gain_g"], _COL["gain_b"]]].view(-1, 3, 1, 1)
    img = (img * gains).clamp(0, 1)
    saturation = _column(params, "saturation")
    img = (img * saturation + (img * grey).sum(1, keepdim=True) * (1 - saturation)).clamp(0, 1)
    angle = 2 * math.pi * params[:, _COL["hue"]]
    rot = torch.zeros(len(params), 3, 3, dtype=images.dtype, device=images.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    mix = _YIQ_INV.to(images) @ rot @ _YIQ.to(images)
    return torch.einsum("nij,njhw->nihw", mix, img).clamp(0, 1)


def _illumination(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Multiply by a linear brightness gradient times a radial vignette (uneven fundus illumination)."""
    size = images.shape[-1]
    coords = torch.linspace(-1.0, 1.0, size, device=images.device, dtype=images.dtype)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = _column(params, "illum_angle")
    gradient = 1 + _column(params, "illum_strength") * (xx * angle.cos() + yy * angle.sin())
    vignette = 1 - _column(params, "vignette") * (xx ** 2 + yy ** 2) / 2
    return images * (gradient * vignette).clamp(min=0)


def _blur(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (0 = untouched), reflect padding."""
    n, c, size, _ = images.shape
    sigma = params[:, _COL["blur_sigma"]] * size / 64
    radius = 2 * round(MAX_BLUR_SIGMA * size / 64)
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-x ** 2 / (2 * sigma.clamp(min=1e-6).view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(-1, keepdim=True)
    kernel = kernel.repeat_interleave(c, 0)  # [n * c, k]
    flat = F.pad(images.reshape(1, n * c, size, size), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, size, size)


def augment_batch(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``[N, 3, S, S]`` images in [0, 1] and ``[N, len(FIELDS)]`` parameters -> augmented images in [0, 1]."""
    params = params.to(images.device, images.dtype)
    img = _geometry(images, params)
    img = _colour(img, params)
    img = _illumination(img, params)
    return _blur(img, params).clamp(0, 1)
