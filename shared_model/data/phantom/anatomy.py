"""Where the optic disc, fovea and field of view sit in a fundus image, and retinal quadrants.

Laterality convention (as in standard macula-centred fundus photographs, which
are not mirrored): in a right eye (OD) the optic disc lies to the *right* of
the fovea in the image, in a left eye (OS) to the left.  The disc is the
nasal side, so "temporal" means away from the disc.  Superior is the image top.
"""

from dataclasses import dataclass

import numpy as np

# Disc diameter as a fraction of the field-of-view radius (45-degree camera:
# the field spans about 7 disc diameters, enlarged a little so that the disc
# and cup stay readable at 64 px).
DISC_DIAMETER_PER_FOV_RADIUS = 0.21
# Fovea to disc-centre distance in disc diameters (anatomical average 2.5).
FOVEA_DISTANCE_DD = 2.5


@dataclass(frozen=True)
class FundusLayout:
    """Pixel geometry of one fundus image."""

    size: int
    centre: tuple[float, float]  # field-of-view centre (x, y)
    fov_radius: float
    disc: tuple[float, float]
    disc_radius: float  # half the disc diameter
    fovea: tuple[float, float]
    nasal: int  # +1 when nasal (the disc side) is image-right, as in a right eye

    @property
    def dd(self) -> float:
        """One disc diameter in pixels: the unit clinicians measure fundus distances in."""
        return 2.0 * self.disc_radius

    def quadrants(self, x: np.ndarray, y: np.ndarray) -> list[str]:
        """Clinical quadrant name for each point, split at the midpoint of disc and fovea."""
        mx = 0.5 * (self.disc[0] + self.fovea[0])
        my = 0.5 * (self.disc[1] + self.fovea[1])
        vertical = np.where(np.asarray(y) < my, "supero", "infero")
        nasal = (np.asarray(x) - mx) * self.nasal > 0
        horizontal = np.where(nasal, "nasal", "temporal")
        return [v + h for v, h in zip(vertical.tolist(), horizontal.tolist())]

    def inside(self, x: np.ndarray, y: np.ndarray, margin: float = 0.92) -> np.ndarray:
        """True where a point is inside ``margin`` x the field of view and inside the frame."""
        r = np.hypot(x - self.centre[0], y - self.centre[1])
        in_frame = (x > 1) & (x < self.size - 1) & (y > 1) & (y < self.size - 1)
        return (r < margin * self.fov_radius) & in_frame


def sample_layout(rng: np.random.Generator, eye: str, size: int, fov_radius: float) -> FundusLayout:
    """Macula-centred layout with small per-image jitter.

    ``fov_radius`` is the field-of-view radius as a fraction of half the image size.
    """
    nasal = 1 if eye == "OD" else -1
    radius = fov_radius * size / 2.0
    centre = (size / 2.0 + rng.uniform(-0.015, 0.015) * size,
              size / 2.0 + rng.uniform(-0.015, 0.015) * size)
    dd = DISC_DIAMETER_PER_FOV_RADIUS * radius * rng.uniform(0.92, 1.08)
    disc = (centre[0] + nasal * rng.uniform(0.47, 0.57) * radius,
            centre[1] + rng.uniform(-0.06, 0.03) * radius)
    fovea = (disc[0] - nasal * FOVEA_DISTANCE_DD * dd * rng.uniform(0.93, 1.07),
             disc[1] + dd * rng.uniform(0.1, 0.4))
    return FundusLayout(size, centre, radius, disc, dd / 2.0, fovea, nasal)
