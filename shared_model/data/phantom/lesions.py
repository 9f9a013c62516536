"""Which lesions each fundus category gets, where, and how many: the ground truth of a CFP.

Counts along the DR grades grow monotonically (mild < moderate < severe <
proliferative).  Sizes are set in disc diameters, then enlarged at small image
sizes (``_size_boost``) and floored at about one pixel, so every class stays
recognisable at 64 px.
"""

from dataclasses import dataclass, field

import numpy as np

from .anatomy import FundusLayout
from .categories import DR_RETINOPATHY_GRADES
from .findings import Lesion
from .vessels import Vessel

# (microaneurysms, dot-blot haemorrhages per quadrant (moderate: twice that, temporal side
# only), hard exudates, cotton-wool spots); ranges inclusive.
_DR_COUNTS: dict[str, tuple[tuple[int, int], ...]] = {
    "mild_npdr": ((3, 8), (0, 0), (0, 0), (0, 0)),
    "moderate_npdr": ((8, 14), (2, 4), (2, 6), (0, 1)),
    "severe_npdr": ((12, 20), (5, 8), (3, 8), (2, 4)),
    "pdr": ((14, 24), (6, 9), (3, 8), (2, 5)),
}

# Spot radii in disc diameters and their floors in pixels.
_RADIUS_DD: dict[str, tuple[float, float]] = {
    "microaneurysm": (0.03, 0.05),
    "haemorrhage": (0.08, 0.2),
    "hard_exudate": (0.04, 0.09),
    "cotton_wool_spot": (0.14, 0.26),
    "drusen": (0.07, 0.17),
}
_FLOOR_PX: dict[str, float] = {
    "microaneurysm": 0.6,
    "haemorrhage": 0.9,
    "hard_exudate": 0.6,
    "cotton_wool_spot": 1.2,
    "drusen": 0.8,
}


@dataclass
class FundusPathology:
    """Sampled disease state of one fundus: lesions to draw plus disc, vessel and media changes."""

    lesions: list[Lesion] = field(default_factory=list)
    signs: list[str] = field(default_factory=list)
    cup_disc_ratio: float = 0.3
    notch: str | None = None
    disc_pallor: float = 0.0
    disc_aspect: float = 1.08  # vertical / horizontal disc radius; larger = tilted (myopic) disc
    ppa_width_dd: float = 0.0  # temporal peripapillary atrophy crescent
    tessellation: float = 0.0
    haze: float = 0.0  # cataract veil strength
    artery_scale: float = 1.0
    beading: bool = False
    av_nicks: int = 0


def _size_boost(size: int) -> float:
    """Spot-lesion enlargement at small image sizes so a 64 px ViT patch still sees them."""
    return max(1.0, (128.0 / size) ** 0.5)


def _radius_px(rng: np.random.Generator, layout: FundusLayout, kind: str) -> float:
    lo, hi = _RADIUS_DD[kind]
    return max(rng.uniform(lo, hi) * layout.dd * _size_boost(layout.size), _FLOOR_PX[kind])


def _scatter(rng: np.random.Generator, layout: FundusLayout, n: int, centre: tuple[float, float],
             r_dd: tuple[float, float], angles: tuple[float, float] = (0.0, 2 * np.pi)
             ) -> np.ndarray:
    """``n`` points [n, 2] spread evenly over an annular sector, inside the field, off the disc."""
    if n <= 0:
        return np.zeros((0, 2))
    m = 8 * n + 16
    theta = rng.uniform(angles[0], angles[1], m)
    lo, hi = r_dd[0] * layout.dd, r_dd[1] * layout.dd
    r = np.sqrt(rng.uniform(lo * lo, hi * hi, m))
    x = centre[0] + r * np.cos(theta)
    y = centre[1] + r * np.sin(theta)
    ok = layout.inside(x, y) & (np.hypot(x - layout.disc[0], y - layout.disc[1])
                                > 1.4 * layout.disc_radius)
    pts = np.stack([x[ok], y[ok]], 1)[:n]
    if len(pts) < n:  # tiny fields: accept points anywhere inside the field
        fallback = np.stack([x, y], 1)[layout.inside(x, y, 0.97)][: n - len(pts)]
        pts = np.vstack([pts, fallback])
    return pts


def _posterior_pole_centre(layout: FundusLayout) -> tuple[float, float]:
    return (0.5 * (layout.disc[0] + layout.fovea[0]), 0.5 * (layout.disc[1] + layout.fovea[1]))


def _add_spots(lesions: list[Lesion], rng: np.random.Generator, layout: FundusLayout, kind: str,
               points: np.ndarray, region: str | None = None) -> None:
    regions = layout.quadrants(points[:, 0], points[:, 1]) if region is None else None
    for i, (x, y) in enumerate(points):
        lesions.append(Lesion(kind, float(x) / layout.size, float(y) / layout.size,
                              _radius_px(rng, layout, kind) / layout.size,
                              region if region is not None else regions[i]))


def _quadrant_points(rng: np.random.Generator, layout: FundusLayout, per_quadrant: int,
                     r_dd: tuple[float, float]) -> np.ndarray:
    centre = _posterior_pole_centre(layout)
    parts = [_scatter(rng, layout, per_quadrant, centre, r_dd, (q * np.pi / 2, (q + 1) * np.pi / 2))
             for q in range(4)]
    return np.vstack(parts)


def _diabetic(rng: np.random.Generator, layout: FundusLayout, grade: str,
              vessels: list[Vessel], p: FundusPathology) -> None:
    (ma_lo, ma_hi), (h_lo, h_hi), (ex_lo, ex_hi), (cw_lo, cw_hi) = _DR_COUNTS[grade]
    pole = _posterior_pole_centre(layout)
    _add_spots(p.lesions, rng, layout, "microaneurysm",
               _scatter(rng, layout, int(rng.integers(ma_lo, ma_hi + 1)), layout.fovea, (0.5, 2.8)))
    per_quadrant = int(rng.integers(h_lo, h_hi + 1))
    if grade == "moderate_npdr":
        # Fewer than the 4-2-1 rule's 20 haemorrhages and not in all quadrants:
        # keep them on the temporal (macular) side of the disc.
        temporal = 0.0 if layout.nasal < 0 else np.pi
        _add_spots(p.lesions, rng, layout, "haemorrhage", _scatter(
            rng, layout, 2 * per_quadrant, layout.fovea, (0.6, 3.0),
            (temporal - 0.5 * np.pi, temporal + 0.5 * np.pi)))
    elif per_quadrant:
        _add_spots(p.lesions, rng, layout, "haemorrhage", _quadrant_points(
            rng, layout, per_quadrant, (0.8, 3.6)))
    n_ex = int(rng.integers(ex_lo, ex_hi + 1))
    _add_spots(p.lesions, rng, layout, "hard_exudate",
               _scatter(rng, layout, n_ex, pole, (0.6, 3.0)))
    n_cw = int(rng.integers(cw_lo, cw_hi + 1))
    _add_spots(p.lesions, rng, layout, "cotton_wool_spot",
               _scatter(rng, layout, n_cw, pole, (1.0, 3.0)))
    if grade in ("severe_npdr", "pdr"):
        p.beading = True
        p.signs.append("venous_beading")
    if grade == "pdr":
        _proliferative(rng, layout, vessels, p)


def _proliferative(rng: np.random.Generator, layout: FundusLayout, vessels: list[Vessel],
                   p: FundusPathology) -> None:
    at_disc = rng.uniform() < 0.6 or not any(v.name.endswith("temporal") for v in vessels)
    if at_disc:
        x = layout.disc[0] + rng.normal(0, 0.15) * layout.dd
        y = layout.disc[1] + rng.normal(0, 0.15) * layout.dd
        radius = rng.uniform(0.6, 0.85) * layout.dd * _size_boost(layout.size)
        p.lesions.append(Lesion("neovascularisation", x / layout.size, y / layout.size,
                                radius / layout.size, "disc"))
    arcades = [v for v in vessels if not v.artery and v.name.endswith("temporal")]
    if arcades and (not at_disc or rng.uniform() < 0.3):
        points = arcades[int(rng.integers(len(arcades)))].points
        x, y = points[int(rng.integers(len(points) // 2, len(points) * 3 // 4 + 1))]
        region = layout.quadrants(np.array([x]), np.array([y]))[0]
        radius = rng.uniform(0.5, 0.7) * layout.dd * _size_boost(layout.size)
        p.lesions.append(Lesion("neovascularisation", float(x) / layout.size,
                                float(y) / layout.size, radius / layout.size, region))
    if rng.uniform() < 0.5:
        side = rng.choice([-1.0, 1.0])
        x = layout.fovea[0] + rng.normal(0, 0.4) * layout.dd
        y = layout.fovea[1] + side * rng.uniform(1.2, 1.8) * layout.dd
        region = layout.quadrants(np.array([x]), np.array([y]))[0]
        p.lesions.append(Lesion("preretinal_haemorrhage", x / layout.size, y / layout.size,
                                rng.uniform(0.5, 0.8) * layout.dd / layout.size, region))


def _macular_oedema(rng: np.random.Generator, layout: FundusLayout, primary: bool,
                    p: FundusPathology) -> None:
    # Circinate ring: exudates at the edge of the leaking, thickened zone.
    start = rng.uniform(0, 2 * np.pi)
    arc = rng.uniform(1.2, 2.0) * np.pi
    ring = _scatter(rng, layout, int(rng.integers(14, 27)), layout.fovea, (0.7, 1.3),
                    (start, start + arc))
    cluster = _scatter(rng, layout, int(rng.integers(3, 7)), layout.fovea, (0.25, 0.6))
    _add_spots(p.lesions, rng, layout, "hard_exudate", np.vstack([ring, cluster]), "macula")
    p.signs.append("circinate_exudates")
    if primary:  # DME never comes alone: a few macular microaneurysms and dot haemorrhages
        spots = _scatter(rng, layout, int(rng.integers(3, 7)), layout.fovea, (0.4, 1.6))
        _add_spots(p.lesions, rng, layout, "microaneurysm", spots, "macula")
        spots = _scatter(rng, layout, int(rng.integers(0, 3)), layout.fovea, (0.5, 1.6))
        _add_spots(p.lesions, rng, layout, "haemorrhage", spots, "macula")


def _hypertensive(rng: np.random.Generator, layout: FundusLayout, p: FundusPathology) -> None:
    p.artery_scale = rng.uniform(0.5, 0.6)
    p.av_nicks = int(rng.integers(2, 5))
    p.signs += ["arteriolar_narrowing", "av_nicking"]
    for x, y in _scatter(rng, layout, int(rng.integers(3, 9)), layout.disc, (0.8, 2.6)):
        length = max(rng.uniform(0.2, 0.4) * layout.dd * _size_boost(layout.size), 1.6)
        p.lesions.append(Lesion("flame_haemorrhage", x / layout.size, y / layout.size,
                                length / layout.size, "peripapillary"))
    _add_spots(p.lesions, rng, layout, "cotton_wool_spot",
               _scatter(rng, layout, int(rng.integers(2, 6)), layout.disc, (0.8, 2.4)))
    if rng.uniform() < 0.3:
        star = _scatter(rng, layout, int(rng.integers(8, 15)), layout.fovea, (0.3, 0.9))
        _add_spots(p.lesions, rng, layout, "hard_exudate", star, "macula")
        p.signs.append("macular_star")


def plan_pathology(rng: np.random.Generator, labels: tuple[str, ...], layout: FundusLayout,
                   vessels: list[Vessel]) -> FundusPathology:
    """Sample every lesion and sign the ``labels`` call for (an empty plan for ``normal``)."""
    p = FundusPathology(cup_disc_ratio=round(float(rng.uniform(0.2, 0.45)), 2),
                        tessellation=float(rng.uniform(0.0, 0.08)))
    grade = next((label for label in labels if label in DR_RETINOPATHY_GRADES), None)
    if grade is not None:
        _diabetic(rng, layout, grade, vessels, p)
    if "dme" in labels:
        _macular_oedema(rng, layout, primary=grade is None, p=p)
    if "glaucoma" in labels:
        p.cup_disc_ratio = round(float(rng.uniform(0.7, 0.9)), 2)
        p.disc_pallor = float(rng.uniform(0.3, 0.5))
        p.signs.append("large_cup")
        if rng.uniform() < 0.7:
            p.notch = "inferior" if rng.uniform() < 0.7 else "superior"
            p.signs.append("rim_notch")
    if "amd" in labels:
        # Drusen crowd the fovea: radius drawn half-normal, not area-uniform.
        n = int(rng.integers(12, 31))
        r = np.minimum(np.abs(rng.normal(0.0, 0.8, n)), 1.7) * layout.dd
        theta = rng.uniform(0, 2 * np.pi, n)
        pts = np.stack([layout.fovea[0] + r * np.cos(theta),
                        layout.fovea[1] + r * np.sin(theta)], 1)
        _add_spots(p.lesions, rng, layout, "drusen", pts, "macula")
        p.signs.append("drusen")
    if "pathologic_myopia" in labels:
        p.tessellation = float(rng.uniform(0.8, 1.0))
        p.ppa_width_dd = float(rng.uniform(0.5, 0.9))
        p.disc_aspect = float(rng.uniform(1.25, 1.4))
        p.signs += ["tessellation", "peripapillary_atrophy", "tilted_disc"]
    if "cataract" in labels:
        p.haze = float(rng.uniform(0.4, 0.55))
        p.signs.append("media_haze")
    if "hypertensive_retinopathy" in labels:
        _hypertensive(rng, layout, p)
    return p
