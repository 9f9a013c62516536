"""Retinal vessel tree: four arcades and nasal vessels leaving the optic disc, with branches.

The temporal arcades curve around the macula and no vessel enters the foveal
avascular zone, as in a real fundus.  Each main path exists twice, an artery
(narrower, drawn brighter) and a vein (wider, darker), slightly apart.
"""

from dataclasses import dataclass

import numpy as np

from .anatomy import FundusLayout
from .canvas import Canvas

# Bezier control points of the main vessels as (temporal, inferior) offsets
# from the disc centre in disc diameters; the fovea sits near (2.5, 0.25).
_MAIN_PATHS: dict[str, tuple[tuple[float, float], ...]] = {
    "superotemporal": ((0.0, -0.15), (0.1, -2.5), (2.0, -3.3), (6.5, -2.3)),
    "inferotemporal": ((0.0, 0.15), (0.1, 2.5), (2.0, 3.4), (6.5, 2.6)),
    "superonasal": ((0.0, -0.15), (-0.5, -1.2), (-1.4, -2.0), (-2.6, -3.8)),
    "inferonasal": ((0.0, 0.15), (-0.5, 1.2), (-1.4, 2.1), (-2.6, 3.8)),
    "nasal": ((0.0, 0.0), (-0.8, -0.1), (-1.8, 0.2), (-3.0, 0.1)),
}
_VEIN_WIDTH_DD = 0.12  # ~125 um retinal vein at the disc margin / 1.8 mm disc
_ARTERY_WIDTH_DD = 0.085
_FAZ_RADIUS_DD = 0.45  # foveal avascular zone


@dataclass(frozen=True)
class Vessel:
    """One vessel segment chain: centreline ``points`` [N, 2] (x, y) px and ``width`` [N] px."""

    points: np.ndarray
    width: np.ndarray
    artery: bool
    name: str  # main path name; branches inherit it with a "/branch" suffix


def _bezier(control: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = control
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def _wiggle(rng: np.random.Generator, points: np.ndarray, amplitude: float) -> np.ndarray:
    """Displace a centreline sideways by a smooth random curve (vessel tortuosity)."""
    tangent = np.gradient(points, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    s = np.linspace(0.0, 1.0, len(points))
    freq = rng.uniform(1.5, 4.0, 2)
    phase = rng.uniform(0, 2 * np.pi, 2)
    offset = amplitude * (np.sin(2 * np.pi * freq[0] * s + phase[0])
                          + 0.5 * np.sin(2 * np.pi * freq[1] * s + phase[1]))
    offset *= np.minimum(s * 4.0, 1.0)  # vessels leave the disc without a kink
    return points + normal * offset[:, None]


def _kept_lengths(layout: FundusLayout, paths: np.ndarray) -> np.ndarray:
    """Per path [B, N, 2]: number of leading points before it enters the foveal avascular
    zone or leaves the field of view."""
    to_fovea = np.hypot(paths[..., 0] - layout.fovea[0], paths[..., 1] - layout.fovea[1])
    to_centre = np.hypot(paths[..., 0] - layout.centre[0], paths[..., 1] - layout.centre[1])
    bad = (to_fovea < _FAZ_RADIUS_DD * layout.dd) | (to_centre > 1.03 * layout.fov_radius)
    return np.where(bad.any(axis=-1), bad.argmax(axis=-1), paths.shape[-2])


def _sprout(rng: np.random.Generator, layout: FundusLayout, parents: list[Vessel],
            parent_index: np.ndarray, point_index: np.ndarray, length_dd: tuple[float, float],
            steps: int) -> list[Vessel]:
    """Grow one branch per (parent, point) pair at once as smooth random walks."""
    n = len(parent_index)
    if n == 0:
        return []
    starts = np.array([parents[p].points[i] for p, i in zip(parent_index, point_index)])
    ahead = np.array([parents[p].points[i + 1] - parents[p].points[i - 1]
                      for p, i in zip(parent_index, point_index)])
    side = rng.choice([-1.0, 1.0], n)
    heading0 = np.arctan2(ahead[:, 1], ahead[:, 0]) + side * rng.uniform(0.4, 0.9, n)
    # Branches bend back a little towards their parent's course, then wander slowly.
    bend = -side * rng.uniform(0.0, 0.06, n)
    heading = (heading0[:, None] + bend[:, None] * np.arange(steps)
               + np.cumsum(rng.normal(0.0, 0.07, (n, steps)), axis=1))
    step = rng.uniform(*length_dd, n) * layout.dd / steps
    paths = np.concatenate([starts[:, None, :], starts[:, None, :] + np.cumsum(
        step[:, None, None] * np.stack([np.cos(heading), np.sin(heading)], -1), axis=1)], axis=1)
    keep = _kept_lengths(layout, paths)
    width0 = np.array([parents[p].width[i] for p, i in zip(parent_index, point_index)])
    width = (width0 * rng.uniform(0.55, 0.75, n))[:, None] * np.linspace(1.0, 0.6, steps + 1)
    return [Vessel(paths[b, :keep[b]], np.maximum(width[b, :keep[b]], 0.5),
                   parents[parent_index[b]].artery, parents[parent_index[b]].name + "/branch")
            for b in range(n) if keep[b] >= 2]


def _branch_points(rng: np.random.Generator, parents: list[Vessel], low: int, high: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``low``..``high - 1`` branching points on each parent, away from its two ends."""
    counts = rng.integers(low, high, len(parents))
    lengths = np.array([len(v.points) for v in parents])
    counts = np.where(lengths >= 5, counts, 0)
    parent_index = np.repeat(np.arange(len(parents)), counts)
    span = np.maximum(lengths[parent_index] - 4, 1)
    point_index = 2 + np.floor(rng.uniform(0.0, 1.0, len(parent_index)) * span).astype(int)
    return parent_index, point_index


def grow_vessel_tree(rng: np.random.Generator, layout: FundusLayout) -> list[Vessel]:
    """Main arteries and veins with two generations of branches, in pixel coordinates."""
    temporal = -layout.nasal
    origin = np.array(layout.disc)
    mains: list[Vessel] = []
    for name, control in _MAIN_PATHS.items():
        for artery in (True, False):
            c = np.array(control, dtype=float)
            c[1:] += rng.normal(0.0, 0.22, (3, 2))
            c[0] += rng.normal(0.0, 0.06, 2)
            if not artery:  # veins run a little apart from their artery
                c[1:, 1] += 0.3 * np.sign(c[1:, 1] + 1e-9)
            pts_dd = _wiggle(rng, _bezier(c, 28), rng.uniform(0.04, 0.09))
            points = origin + pts_dd * np.array([temporal, 1.0]) * layout.dd
            keep = int(_kept_lengths(layout, points))
            if keep < 2:
                continue
            w0 = (_ARTERY_WIDTH_DD if artery else _VEIN_WIDTH_DD) * layout.dd
            w0 *= 0.8 if name == "nasal" else 1.0
            floor = 0.7 if artery else 0.8  # keep main vessels visible at 64 px
            width = np.maximum(w0 * np.linspace(1.0, 0.45, 28), floor)
            mains.append(Vessel(points[:keep], width[:keep], artery, name))
    first = _sprout(rng, layout, mains, *_branch_points(rng, mains, 3, 6), (0.8, 2.2), 10)
    second = _sprout(rng, layout, first, *_branch_points(rng, first, 0, 3), (0.4, 1.1), 6)
    return mains + first + second


def draw_vessels(canvas: Canvas, vessels: list[Vessel], artery_scale: float = 1.0,
                 beading: bool = False) -> None:
    """Draw arteries on layer ``"artery"`` and veins on ``"vein"``.

    ``artery_scale`` < 1 narrows arterioles (hypertension); ``beading`` makes
    vein calibre alternate segment by segment (severe diabetic retinopathy).
    """
    for vessel in vessels:
        layer = "artery" if vessel.artery else "vein"
        width = vessel.width * artery_scale if vessel.artery else vessel.width
        if beading and not vessel.artery:
            for k in range(len(vessel.points) - 1):
                bead = 1.9 if k % 2 else 1.0
                canvas.polyline(layer, vessel.points[k:k + 2], width[k] * bead)
            continue
        # Chunks of 7 points: few draw calls, still a visible taper.
        starts = range(0, len(vessel.points) - 1, 6)
        chunk_widths = np.add.reduceat(width, starts) / np.diff([*starts, len(width)])
        for k, w in zip(starts, chunk_widths.tolist()):
            canvas.polyline(layer, vessel.points[k:k + 7], w)


def draw_av_nicks(canvas: Canvas, rng: np.random.Generator, vessels: list[Vessel],
                  count: int) -> list[tuple[float, float]]:
    """Arteriovenous nicking: a vein pinched where an artery crosses it.

    Returns the crossing points in pixels.
    """
    veins = [v for v in vessels if not v.artery and "/" not in v.name and len(v.points) > 8]
    sites: list[tuple[float, float]] = []
    for vein in (veins[int(i)] for i in rng.choice(len(veins), size=min(count, len(veins)),
                                                  replace=False)):
        i = int(rng.integers(len(vein.points) // 4, len(vein.points) * 3 // 4))
        x, y = vein.points[i]
        w = float(vein.width[i])
        canvas.ellipse("vein", x, y, 1.4 * w, value=0)
        d = vein.points[i + 1] - vein.points[i - 1]
        across = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9)
        segment = np.array([[x, y] - 2.5 * w * across, [x, y] + 2.5 * w * across])
        canvas.polyline("artery", segment, max(0.6 * w, 0.6))
        sites.append((float(x), float(y)))
    return sites


def draw_neovascular_tuft(canvas: Canvas, rng: np.random.Generator, x: float, y: float,
                          radius: float) -> None:
    """Fine, tangled new vessels: short random-walk loops within ``radius`` px, layer ``"nv"``."""
    loops = int(rng.integers(10, 16))
    steps = 7
    start = np.array([x, y]) + rng.uniform(-0.6, 0.6, (loops, 2)) * radius
    heading = rng.uniform(0, 2 * np.pi, (loops, 1)) + np.cumsum(
        rng.normal(0.6, 0.5, (loops, steps)), axis=1)  # curling: loops, not straight twigs
    step = radius * 0.28
    path = start[:, None, :] + np.cumsum(
        step * np.stack([np.cos(heading), np.sin(heading)], -1), axis=1)
    width = max(0.06 * radius, 0.45)
    for loop in np.concatenate([start[:, None, :], path], axis=1):
        canvas.polyline("nv", loop, width)
