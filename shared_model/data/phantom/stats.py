"""Image statistics for checking phantom images against real ones (and lesions against labels).

All functions take uint8 arrays: [H, W, 3] colour or [H, W] grey.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

FOV_THRESHOLD = 20  # max channel above this (of 255) counts as inside the field of view


def load_image(path: str | Path, size: int | None = None, mode: str = "RGB") -> np.ndarray:
    """Open an image as uint8 in ``mode``, optionally resized to ``size`` x ``size`` (bilinear)."""
    with Image.open(path) as image:
        image = image.convert(mode)
        if size is not None:
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image)


def fov_mask(rgb: np.ndarray, threshold: int = FOV_THRESHOLD) -> np.ndarray:
    """Boolean field-of-view mask: pixels whose brightest channel exceeds ``threshold``."""
    return rgb.max(axis=-1) > threshold


def fov_fraction(rgb: np.ndarray, threshold: int = FOV_THRESHOLD) -> float:
    """Fraction of the frame inside the field of view (non-black pixels)."""
    return float(fov_mask(rgb, threshold).mean())


def fov_mean_rgb(rgb: np.ndarray) -> np.ndarray:
    """Mean (R, G, B) over the field of view, float64 [3]."""
    return rgb[fov_mask(rgb)].astype(np.float64).mean(axis=0)


def fov_mean_intensity(rgb: np.ndarray) -> float:
    """Mean of all three channels over the field of view."""
    return float(fov_mean_rgb(rgb).mean())


def yellow_fraction(rgb: np.ndarray) -> float:
    """Fraction of field-of-view pixels that are bright yellow (exudates, drusen, disc).

    Fundus background has green well under half of red; yellow lesions have
    green close to red and little blue.
    """
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    yellow = (r > 150) & (g > 0.7 * r) & (b < 0.65 * g)
    mask = fov_mask(rgb)
    return float((yellow & mask).sum() / max(mask.sum(), 1))


def pale_fraction(rgb: np.ndarray) -> float:
    """Fraction of field-of-view pixels that are pale, near white (optic cup, atrophy, veil)."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    pale = (r > 170) & (g > 0.78 * r) & (b > 0.55 * r)
    mask = fov_mask(rgb)
    return float((pale & mask).sum() / max(mask.sum(), 1))


def local_contrast(rgb: np.ndarray) -> float:
    """Mean absolute Laplacian of the green channel inside the eroded field of view.

    Green carries most fundus detail (vessels, lesions); erosion keeps the
    field-of-view edge from counting as detail.
    """
    green = rgb[..., 1].astype(np.float32) if rgb.ndim == 3 else rgb.astype(np.float32)
    mask = ndimage.binary_erosion(fov_mask(rgb) if rgb.ndim == 3 else np.ones_like(green, bool),
                                  iterations=max(2, rgb.shape[0] // 32))
    return float(np.abs(ndimage.laplace(green))[mask].mean()) if mask.any() else 0.0


def is_grey(image: np.ndarray) -> bool:
    """True for a single-channel image or one whose three channels are equal."""
    if image.ndim == 2:
        return True
    return bool(np.array_equal(image[..., 0], image[..., 1])
                and np.array_equal(image[..., 1], image[..., 2]))


def grey_mean_std(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a grey image's intensity."""
    values = image.astype(np.float64)
    return float(values.mean()), float(values.std())
