"""Smooth random fields for fundus background, choroidal pattern and OCT texture."""

import numpy as np
from PIL import Image


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float,
                 cells_y: float | None = None) -> np.ndarray:
    """Zero-mean, roughly unit-std random field with about ``cells`` blobs across the width.

    Bicubic upsampling of a coarse Gaussian grid: cheap, band-limited and the
    same at every output size for the same random draws.
    """
    cells_y = cells if cells_y is None else cells_y
    gx, gy = int(np.ceil(cells)) + 3, int(np.ceil(cells_y)) + 3
    grid = rng.standard_normal((gy, gx)).astype(np.float32)
    # Crop one cell of margin on each side so the bicubic edges do not flatten out.
    box = (1.0, 1.0, 1.0 + cells, 1.0 + cells_y)
    field = Image.fromarray(grid).resize((width, height), Image.BICUBIC, box=box)
    out = np.asarray(field, dtype=np.float32)
    out = out - out.mean()
    return out / max(float(out.std()), 1e-6)


def ridges(field: np.ndarray, sharpness: float) -> np.ndarray:
    """1 on the zero-crossings of ``field``, falling to 0 away from them: a vessel-like network."""
    return np.exp(-(field * sharpness) ** 2)
