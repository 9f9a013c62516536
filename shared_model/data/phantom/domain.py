"""Per-site acquisition shift: camera colour, optics and compression; OCT device contrast.

Each training site draws its own :class:`SiteDomain` from the seed; the
held-out site draws from ranges that lie outside the training ranges (a
yellow-green camera with a smaller field of view, stronger vignetting and
compression, and a grainier OCT), so evaluation there measures transfer to an
unseen device rather than interpolation between training sites.
"""

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class SiteDomain:
    """Acquisition characteristics of one site; the defaults are a neutral, ideal camera."""

    colour_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white balance, RGB multipliers
    brightness: float = 1.0
    gamma: float = 1.0  # output = input ** gamma: > 1 darkens mid-tones
    blur: float = 0.0  # Gaussian sigma as a fraction of the image width (defocus)
    vignetting: float = 0.0  # fractional darkening at the rim of the field of view
    illumination_gradient: float = 0.0  # peak-to-peak brightness change across the field
    illumination_angle: float = 0.0  # direction of that gradient, radians
    fov_radius: float = 0.95  # field-of-view circle radius, fraction of half the image width
    noise: float = 0.0  # sensor noise std on the [0, 1] scale
    jpeg_quality: int | None = None  # None: no compression round trip
    oct_gain: float = 1.0
    oct_gamma: float = 1.0
    oct_speckle: float = 4.0  # gamma shape of the speckle; lower is grainier
    oct_tilt: float = 0.0  # retina slope across the scan, fraction of the height
    oct_blur: float = 0.0  # Gaussian sigma as a fraction of the scan width

    def to_dict(self) -> dict:
        """Plain-JSON form for ``phantom.json``."""
        return asdict(self)


NEUTRAL_DOMAIN = SiteDomain()


def sample_site_domain(rng: np.random.Generator, heldout: bool = False) -> SiteDomain:
    """Draw one site's domain; ``heldout`` uses ranges disjoint from the training sites'."""
    u = rng.uniform
    if heldout:
        return SiteDomain(
            colour_gain=(round(u(0.84, 0.9), 3), round(u(1.22, 1.32), 3), round(u(0.6, 0.72), 3)),
            brightness=round(u(1.0, 1.08), 3),
            gamma=round(u(1.2, 1.3), 3),
            blur=round(u(0.006, 0.008), 4),
            vignetting=round(u(0.45, 0.55), 3),
            illumination_gradient=round(u(0.35, 0.45), 3),
            illumination_angle=round(u(0, 2 * np.pi), 3),
            fov_radius=round(u(0.87, 0.9), 3),
            noise=round(u(0.02, 0.03), 4),
            jpeg_quality=int(rng.integers(40, 50)),
            oct_gain=round(u(1.2, 1.3), 3),
            oct_gamma=round(u(1.15, 1.25), 3),
            oct_speckle=round(u(1.6, 2.0), 3),
            oct_tilt=round(float(rng.choice([-1, 1])) * u(0.1, 0.14), 3),
            oct_blur=round(u(0.004, 0.006), 4),
        )
    return SiteDomain(
        colour_gain=(round(u(0.92, 1.08), 3), round(u(0.85, 1.18), 3), round(u(0.8, 1.3), 3)),
        brightness=round(u(0.88, 1.12), 3),
        gamma=round(u(0.85, 1.15), 3),
        blur=round(u(0.0, 0.004), 4),
        vignetting=round(u(0.0, 0.35), 3),
        illumination_gradient=round(u(0.0, 0.3), 3),
        illumination_angle=round(u(0, 2 * np.pi), 3),
        fov_radius=round(u(0.92, 1.08), 3),
        noise=round(u(0.0, 0.015), 4),
        jpeg_quality=None if u() < 0.4 else int(rng.integers(70, 96)),
        oct_gain=round(u(0.85, 1.15), 3),
        oct_gamma=round(u(0.85, 1.1), 3),
        oct_speckle=round(u(3.0, 6.0), 3),
        oct_tilt=round(u(-0.08, 0.08), 3),
        oct_blur=round(u(0.0, 0.003), 4),
    )


def apply_fundus_domain(rgb: np.ndarray, fov: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                        domain: SiteDomain, rng: np.random.Generator) -> np.ndarray:
    """Turn a linear [H, W, 3] fundus rendering in [0, 1] into the site camera's uint8 image.

    ``fov`` is the anti-aliased field-of-view coverage, ``dx``/``dy`` pixel
    offsets from the field centre in field radii (used for vignetting and the
    illumination gradient).
    """
    size = rgb.shape[1]
    img = rgb * (np.asarray(domain.colour_gain, np.float32) * domain.brightness)
    r2 = np.minimum(dx * dx + dy * dy, 1.0)
    light = 1.0 - domain.vignetting * r2 * np.sqrt(r2)
    light *= 1.0 + 0.5 * domain.illumination_gradient * (
        dx * np.cos(domain.illumination_angle) + dy * np.sin(domain.illumination_angle))
    img *= light[..., None]
    if domain.blur > 0:
        sigma = domain.blur * size
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="constant")
    img = np.clip(img, 0.0, 1.0) ** domain.gamma
    if domain.noise > 0:
        img += rng.normal(0.0, domain.noise, img.shape).astype(np.float32)
    img *= fov[..., None]
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if domain.jpeg_quality is not None:
        out = jpeg_round_trip(out, domain.jpeg_quality)
    return out


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG in memory: the block and ringing artefacts of a site archive."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L" if image.ndim == 2 else "RGB"))
