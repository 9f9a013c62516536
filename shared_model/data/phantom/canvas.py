"""Anti-aliased coverage layers: shapes drawn by PIL on a supersampled canvas, box-reduced.

Drawing in C through ``PIL.ImageDraw`` keeps hundreds of vessel segments and
lesions per image cheap; supersampling then averaging gives partial pixel
coverage, so a 0.6 px vessel at 64 px shows as a faint line instead of
vanishing or aliasing.  Coordinates are in output pixels, (0, 0) being the
top-left corner of the top-left pixel.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def supersampling(size: int) -> int:
    """Supersampling factor that makes the drawing canvas at least 256 px wide (at most 4x)."""
    return max(1, min(4, -(-256 // size)))


class Canvas:
    """Named greyscale coverage layers of one ``size`` x ``size`` image."""

    def __init__(self, size: int, ss: int | None = None) -> None:
        self.size = size
        self.ss = ss or supersampling(size)
        self._images: dict[str, Image.Image] = {}
        self._draws: dict[str, ImageDraw.ImageDraw] = {}

    def _draw(self, layer: str) -> ImageDraw.ImageDraw:
        if layer not in self._draws:
            image = Image.new("L", (self.size * self.ss, self.size * self.ss), 0)
            self._images[layer] = image
            self._draws[layer] = ImageDraw.Draw(image)
        return self._draws[layer]

    def ellipse(self, layer: str, x: float, y: float, rx: float, ry: float | None = None,
                value: int = 255) -> None:
        """Filled axis-aligned ellipse centred at (x, y) with radii in output pixels."""
        s = self.ss
        ry = rx if ry is None else ry
        # PIL needs x1 >= x0: a radius under half a canvas pixel still paints one pixel.
        hx, hy = max(rx * s, 0.5), max(ry * s, 0.5)
        self._draw(layer).ellipse([x * s - hx, y * s - hy, x * s + hx, y * s + hy], fill=value)

    def rotated_ellipse(self, layer: str, x: float, y: float, a: float, b: float, angle: float,
                        value: int = 255, lower_half: bool = False) -> None:
        """Filled ellipse with semi-axes ``a`` along ``angle`` (radians) and ``b`` across it.

        ``lower_half`` keeps only the half below the major axis (a boat-shaped
        pre-retinal haemorrhage has a flat top).
        """
        t = np.linspace(0.0, np.pi if lower_half else 2 * np.pi, 16, endpoint=lower_half)
        px, py = a * np.cos(t), b * np.sin(t)
        c, s_ = np.cos(angle), np.sin(angle)
        xs = (x + c * px - s_ * py) * self.ss
        ys = (y + s_ * px + c * py) * self.ss
        self._draw(layer).polygon(np.stack([xs, ys], 1).ravel().tolist(), fill=value)

    def polyline(self, layer: str, points: np.ndarray, width: float, value: int = 255) -> None:
        """Polyline through ``points`` [N, 2] (x, y) of constant ``width`` in output pixels."""
        w = max(1, int(round(width * self.ss)))
        self._draw(layer).line((points * self.ss).ravel().tolist(), fill=value, width=w,
                               joint="curve" if w > 2 else None)

    def coverage(self, layer: str, blur: float = 0.0) -> np.ndarray:
        """Layer as float32 [size, size] coverage in [0, 1].

        ``blur`` is a Gaussian radius in output pixels (soft-edged lesions).
        """
        if layer not in self._images:
            return np.zeros((self.size, self.size), np.float32)
        image = self._images[layer]
        if blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(blur * self.ss))
        if self.ss > 1:
            image = image.reduce(self.ss)
        return np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
