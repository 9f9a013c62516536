"""Procedural macular OCT: B-scans through the fovea and volumes (rasters of B-scans), grey,
Spectralis-like.

A B-scan is ``size`` wide and ``round(size * 496 / 512)`` high (Spectralis
aspect).  Retinal bands are stacked upwards from Bruch's membrane with
thickness profiles that dip at the foveal pit, and are rasterised with exact
partial-pixel coverage, so thin bands blend correctly at 64 px instead of
aliasing.  Nasal is image-right for a right eye (OD), as on the fundus image.

A volume is a square raster of horizontal B-scans at vertical offsets -1
(superior) .. 1 (inferior), centred on the fovea: the same eye
geometry in every slice, the foveal pit fading away from the centre, each
focal lesion at its own height so that only some slices show it, and speckle
drawn afresh per slice.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .categories import DR_RETINOPATHY_GRADES, check_categories, check_eye
from .domain import NEUTRAL_DOMAIN, SiteDomain
from .findings import Findings, Lesion
from .texture import smooth_noise

OCT_ASPECT = 496 / 512  # height / width of a Spectralis B-scan

# Bands top to bottom with their display reflectivity in [0, 1].
_BANDS: tuple[tuple[str, float], ...] = (
    ("vitreous", 0.04),
    ("rnfl", 0.78),  # retinal nerve fibre layer
    ("gcl", 0.42),  # ganglion cell layer
    ("ipl", 0.56),  # inner plexiform layer
    ("inl", 0.22),  # inner nuclear layer
    ("opl", 0.52),  # outer plexiform layer
    ("onl", 0.13),  # outer nuclear layer (with Henle fibres)
    ("ez", 0.85),  # ellipsoid zone
    ("iz", 0.38),  # interdigitation zone
    ("srf", 0.03),  # subretinal fluid; zero thickness unless present
    ("rpe", 0.96),  # retinal pigment epithelium
    ("drusen", 0.5),  # material under the RPE; zero thickness unless present
    ("choroid", 0.5),
    ("sclera", 0.08),
)
_REFLECTIVITY = np.array([r for _, r in _BANDS], np.float32)
# Retinal bands drawn 1.25x their true share of a 1.9 mm deep scan, so that
# the thin plexiform layers still show at 64 px.
_THICKNESS_SCALE = 1.25
# The volume raster is as tall as it is wide: offsets -1 and 1 lie half a scan width from the
# fovea.
_RASTER_HALF_HEIGHT = 0.5
_PIT_FADE = 0.3  # vertical offset over which the foveal pit flattens out
# A focal lesion is drawn at its presence exp(-((v - v_l) / extent)^2) times full size in the
# slices where that presence reaches this floor, and left out of the others.
_PRESENCE_FLOOR = 0.3

Presence = Callable[[str, int], np.ndarray]


def oct_shape(size: int) -> tuple[int, int]:
    """(height, width) of a B-scan rendered at ``size``."""
    return max(8, int(round(size * OCT_ASPECT))), size


def _bumps(u: np.ndarray, centres: np.ndarray, heights: np.ndarray, widths: np.ndarray
           ) -> np.ndarray:
    """Sum of Gaussian bumps along the scan (drusen elevating the RPE)."""
    shape = np.exp(-((u[None] - centres[:, None]) / widths[:, None]) ** 2)
    return (heights[:, None] * shape).sum(0)


def _soft_ellipses(xx: np.ndarray, yy: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                   rx: np.ndarray, ry: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """Union of anti-aliased filled ellipses (all but ``opacity`` in pixels) as coverage [H, W]."""
    out = np.zeros(xx.shape, np.float32)
    height, width = xx.shape
    for x, y, a, b, alpha in zip(cx, cy, rx, ry, opacity):
        rows = slice(max(int(y - b - 1), 0), min(int(y + b + 2), height))
        cols = slice(max(int(x - a - 1), 0), min(int(x + a + 2), width))
        d = np.sqrt(((xx[rows, cols] - x) / a) ** 2 + ((yy[rows, cols] - y) / b) ** 2)
        np.maximum(out[rows, cols], np.clip((1.0 - d) * min(a, b) + 0.5, 0.0, 1.0) * float(alpha),
                   out=out[rows, cols])
    return out


def _fully_present(kind: str, count: int) -> np.ndarray:
    """Presence for a single B-scan: every lesion drawn at full size."""
    return np.ones(count)


def slice_offsets(n_slices: int) -> np.ndarray:
    """Vertical offsets of the B-scans of a volume: -1 (superior) .. 1 (inferior)."""
    return np.linspace(-1.0, 1.0, n_slices)


@dataclass
class _Scan:
    """A B-scan being drawn: its random stream, raster grid and fovea, and the findings so far."""

    rng: np.random.Generator
    labels: tuple[str, ...]
    presence: Presence
    offset: float  # vertical position in a volume, 0 through the fovea
    height: int
    width: int
    uc: float  # the fovea, a fraction of the width
    lesions: list[Lesion] = field(default_factory=list)
    signs: list[str] = field(default_factory=list)
    grade: str | None = field(init=False)  # the DR grade among the labels
    u: np.ndarray = field(init=False)  # A-scan centres [W], fractions of the width
    yy: np.ndarray = field(init=False)  # pixel centres [H, W]
    xx: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.grade = next((label for label in self.labels if label in DR_RETINOPATHY_GRADES), None)
        self.u = (np.arange(self.width, dtype=np.float32) + 0.5) / self.width
        self.yy, self.xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32) + 0.5

    def region(self, x: float) -> str:
        """"central" within 0.1 scan widths of the fovea, else "parafoveal"."""
        off_centre = math.hypot(x - self.uc, _RASTER_HALF_HEIGHT * self.offset)
        return "central" if off_centre < 0.1 else "parafoveal"


def _thickness_profiles(scan: _Scan, nasal: float) -> tuple[dict[str, np.ndarray], float, float, float]:
    """Each band's thickness along the scan (fractions of the height, before
    ``_THICKNESS_SCALE``) and the eye's curvature, depth of Bruch's membrane and choroid
    thickness: the foveal pit, glaucomatous thinning, a myopic staphyloma, then the lesions'
    profiles (:func:`_add_lesion_profiles`)."""
    rng, labels, u, uc = scan.rng, scan.labels, scan.u, scan.uc
    pit = np.exp(-((u - uc) / rng.uniform(0.065, 0.085)) ** 2) * math.exp(
        -(scan.offset / _PIT_FADE) ** 2)
    towards_disc = 1.0 / (1.0 + np.exp(-nasal * (u - uc) / 0.08))
    inner = 1.0
    if "glaucoma" in labels:
        inner = rng.uniform(0.35, 0.5)
        scan.signs.append("rnfl_thinning")
    thick = {
        "rnfl": (0.006 + 0.022 * towards_disc) * (1.0 - pit) * inner,
        "gcl": 0.026 * (1.0 - 0.95 * pit) * inner,
        "ipl": 0.020 * (1.0 - 0.9 * pit),
        "inl": 0.020 * (1.0 - 0.85 * pit),
        "opl": 0.012 * (1.0 - 0.6 * pit),
        "onl": 0.038 + 0.03 * pit,
        "ez": np.full_like(u, 0.008),
        "iz": np.full_like(u, 0.007),
        "srf": np.zeros_like(u),
        "rpe": np.full_like(u, 0.016),
        "drusen": np.zeros_like(u),
    }
    curvature, depth, choroid = 0.15, rng.uniform(0.56, 0.62), rng.uniform(0.085, 0.11)
    if "pathologic_myopia" in labels:
        curvature, depth, choroid = rng.uniform(0.8, 1.0), rng.uniform(0.64, 0.68), 0.035
        for band in ("rnfl", "gcl", "ipl", "inl", "onl"):
            thick[band] = thick[band] * 0.85
        scan.signs += ["posterior_staphyloma", "thin_choroid"]
    _add_lesion_profiles(scan, thick, pit, depth)
    return thick, curvature, depth, choroid


def _add_lesion_profiles(scan: _Scan, thick: dict[str, np.ndarray], pit: np.ndarray, depth: float) -> None:
    """Add DME swelling, drusen under the RPE, subretinal fluid and nerve fibre swelling to ``thick``."""
    rng, labels, presence, u, uc = scan.rng, scan.labels, scan.presence, scan.u, scan.uc
    if "dme" in labels:
        swelling = np.exp(-((u - uc) / rng.uniform(0.12, 0.16)) ** 2)
        thick["onl"] = 0.038 + 0.03 * pit * 0.25 + rng.uniform(0.06, 0.09) * swelling
        thick["inl"] = thick["inl"] + 0.02 * swelling
        scan.signs += ["retinal_thickening", "intraretinal_fluid"]
    if "amd" in labels:
        n = int(rng.integers(3, 9))
        h = np.maximum(rng.uniform(0.015, 0.035, n) * scan.height, 1.6) / scan.height
        centres = uc + rng.uniform(-0.28, 0.28, n)
        spread = rng.uniform(0.012, 0.03, n)
        shown = presence("drusen", n)
        drawn = shown > 0
        thick["drusen"] = _bumps(u, centres[drawn], (h * shown)[drawn], spread[drawn])
        scan.lesions.extend(Lesion("drusen", float(c), float(depth * scan.height / scan.width), float(w),
                                   scan.region(c)) for c, w in zip(centres[drawn], spread[drawn]))
        if drawn.any():
            scan.signs.append("drusen")
    if (scan.grade == "pdr" or "dme" in labels) and rng.uniform() < 0.3:
        h = max(rng.uniform(0.02, 0.045) * scan.height, 1.5) / scan.height
        centre, spread = uc + rng.uniform(-0.05, 0.05), rng.uniform(0.06, 0.1)
        shown = float(presence("subretinal_fluid", 1)[0])
        if shown > 0:
            thick["srf"] = h * shown * np.exp(-((u - centre) / spread) ** 2)
            scan.signs.append("subretinal_fluid")
    if "hypertensive_retinopathy" in labels and rng.uniform() < 0.6:
        uh = uc + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.35)
        shown = float(presence("rnfl_swelling", 1)[0])
        if shown > 0:
            thick["rnfl"] = thick["rnfl"] + 0.02 * shown * np.exp(-((u - uh) / 0.04) ** 2)
            scan.signs.append("rnfl_swelling")


def _boundaries(scan: _Scan, thick: dict[str, np.ndarray], curvature: float, depth: float, choroid: float,
                tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """Bruch's membrane [W] and the band boundaries [len(_BANDS) - 1, W] stacked up from it, in
    pixel rows: the ILM first, then each band's bottom edge, Bruch's membrane, the choroid's bottom."""
    u, height = scan.u, scan.height
    bruch = (depth - curvature * (u - scan.uc) ** 2 + tilt * (u - 0.5)) * height
    stack = ("drusen", "rpe", "srf", "iz", "ez", "onl", "opl", "inl", "ipl", "gcl", "rnfl")
    # Top edge of each band in `stack` order.
    tops = bruch - np.cumsum([thick[b] * _THICKNESS_SCALE * height for b in stack], axis=0)
    return bruch, np.concatenate([tops[::-1], bruch[None], (bruch + choroid * height)[None]])


def _reflectivity(scan: _Scan, bruch: np.ndarray, boundaries: np.ndarray, choroid: float) -> np.ndarray:
    """The layered image [H, W] before lesions: each band's reflectivity at its exact pixel
    coverage, and a choroid of dark vessel lumens fading with depth."""
    yy, height = scan.yy, scan.height
    cover = np.clip(yy[None] - boundaries[:, None, :] + 0.5, 0.0, 1.0)  # [B, H, W]
    img = _REFLECTIVITY[0] + np.tensordot(np.diff(_REFLECTIVITY), cover, axes=1)
    below = np.clip(yy - bruch[None] + 0.5, 0.0, 1.0)
    lumens = smooth_noise(scan.rng, height, scan.width, 30, 14)  # choroidal vessels: dark lumens
    texture = np.clip(0.8 + 0.4 * lumens, 0.2, 1.3) * np.exp(
        -np.maximum(yy - bruch[None], 0.0) / (0.9 * choroid * height))
    return img * (1.0 - below + below * texture)


def _add_foci(scan: _Scan, img: np.ndarray, boundaries: np.ndarray, count: int) -> None:
    """Draw ``count`` hyperreflective foci in the inner retina (IPL top .. ONL top), in place."""
    if count <= 0:
        return
    rng, width = scan.rng, scan.width
    fu = scan.uc + rng.uniform(-0.3, 0.3, count)
    cols = np.clip((fu * width).astype(int), 0, width - 1)
    top, bottom = boundaries[3, cols], boundaries[6, cols]  # IPL top .. ONL top
    fy = top + rng.uniform(0.0, 1.0, count) * (bottom - top)
    r = np.full(count, max(0.005 * width, 0.7))
    shown = scan.presence("hyperreflective_focus", count)
    drawn = shown > 0
    fu, fy, r, shown = fu[drawn], fy[drawn], r[drawn], shown[drawn]
    img[...] = np.maximum(img, 0.85 * _soft_ellipses(scan.xx, scan.yy, fu * width, fy, r, r, shown))
    scan.lesions.extend(Lesion("hyperreflective_focus", float(a), float(b) / width,
                               float(c) / width, scan.region(a)) for a, b, c in zip(fu, fy, r))
    if drawn.any():
        scan.signs.append("hyperreflective_foci")


def _add_cysts(scan: _Scan, img: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Dark intraretinal cysts of DME in the nuclear layers (INL top .. ONL bottom)."""
    rng, width = scan.rng, scan.width
    n = int(rng.integers(3, 8))
    cu = scan.uc + rng.uniform(-0.15, 0.15, n)
    cols = np.clip((cu * width).astype(int), 0, width - 1)
    top, bottom = boundaries[4, cols], boundaries[7, cols]  # INL top .. ONL bottom
    ry = np.maximum((bottom - top) * rng.uniform(0.25, 0.45, n), 0.9)
    cy = top + ry + rng.uniform(0.0, 1.0, n) * np.maximum(bottom - top - 2 * ry, 0.0)
    rx = np.maximum(rng.uniform(0.03, 0.06, n) * width, 1.0)
    shown = scan.presence("intraretinal_cyst", n)
    drawn = shown > 0
    # Size and darkness both shrink towards the edge of a cyst's vertical extent.
    cu, cy, shown = cu[drawn], cy[drawn], shown[drawn]
    rx, ry = rx[drawn] * shown, ry[drawn] * shown
    cysts = _soft_ellipses(scan.xx, scan.yy, cu * width, cy, rx, ry, shown)
    scan.lesions.extend(Lesion("intraretinal_cyst", float(a), float(b) / width, float(c) / width,
                               scan.region(a)) for a, b, c in zip(cu, cy, rx))
    return img * (1.0 - cysts) + 0.03 * cysts


def _add_membrane(scan: _Scan, img: np.ndarray, ilm: np.ndarray) -> np.ndarray:
    """A PDR fibrovascular membrane on the retinal surface, attached at both ends (sometimes)."""
    rng, u, height = scan.rng, scan.u, scan.height
    if rng.uniform() >= 0.7:
        return img
    u0 = rng.uniform(0.1, 0.45)
    u1 = u0 + rng.uniform(0.25, 0.45)
    span = (u > u0) & (u < u1)
    arch = np.sin(np.pi * np.clip((u - u0) / (u1 - u0), 0.0, 1.0))
    lift = rng.uniform(0.03, 0.06) * height * arch
    shown = float(scan.presence("preretinal_membrane", 1)[0])
    if shown <= 0:
        return img
    line_y = ilm - lift * shown - 0.5
    thickness = max(0.006 * height, 0.8)
    membrane = np.clip(1.0 - np.abs(scan.yy - line_y[None]) / thickness, 0.0, 1.0) * span[None]
    scan.signs.append("preretinal_membrane")
    return np.maximum(img, 0.7 * shown * membrane)


def _add_vessels(scan: _Scan, img: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Retinal vessels in the ganglion cell layer, casting shadows down to the choroid."""
    rng, width, xx, yy = scan.rng, scan.width, scan.xx, scan.yy
    n_vessels = int(rng.integers(3, 6))
    vu = scan.uc + rng.choice([-1.0, 1.0], n_vessels) * rng.uniform(0.12, 0.45, n_vessels)
    vcols = np.clip((vu * width).astype(int), 0, width - 1)
    vy = boundaries[1, vcols] + 0.5 * (boundaries[2, vcols] - boundaries[1, vcols])
    vr = np.full(n_vessels, max(0.008 * width, 0.8))
    column = np.clip(1.0 - np.abs(xx[None] - (vu * width)[:, None, None]) / vr[:, None, None], 0, 1)
    shadow = (column * (yy[None] > vy[:, None, None])).max(0)
    img = img * (1.0 - 0.55 * shadow)
    return np.maximum(img, 0.7 * _soft_ellipses(xx, yy, vu * width, vy, vr, vr, np.ones(n_vessels)))


def _acquire(scan: _Scan, img: np.ndarray, domain: SiteDomain, noise: np.random.Generator) -> np.ndarray:
    """The device's acquisition, from ``noise``: speckle, A-scan brightness, blur, gain; uint8 [H, W]."""
    width = scan.width
    signal = 1.0
    # A smaller scan averages more speckle grains per pixel: smoother.
    speckle_shape = domain.oct_speckle * max(1.0, (256.0 / width) ** 0.5)
    blur = domain.oct_blur * width
    if "cataract" in scan.labels:
        signal, speckle_shape, blur = 0.55, speckle_shape * 0.6, blur + 0.005 * width
        scan.signs.append("signal_attenuation")
    img = img * (1.0 + 0.08 * smooth_noise(noise, 1, width, 12))
    img = img * noise.gamma(speckle_shape, 1.0 / speckle_shape, img.shape) + 0.05 * noise.gamma(
        2.0, 0.5, img.shape)
    if blur > 0:
        img = ndimage.gaussian_filter(img, (0.5 * blur, blur))
    img = np.clip(img * signal * domain.oct_gain, 0.0, 1.0) ** domain.oct_gamma
    return (img * 255.0 + 0.5).astype(np.uint8)


def render_oct(rng: np.random.Generator, labels: tuple[str, ...], eye: str, size: int,
               domain: SiteDomain = NEUTRAL_DOMAIN, *, offset: float = 0.0,
               presence: Presence = _fully_present,
               noise_rng: np.random.Generator | None = None) -> tuple[np.ndarray, Findings]:
    """Render one B-scan: uint8 [H, W] grey image and the findings actually drawn.

    Visible correlates: ``amd`` drusen (RPE bumps); ``dme`` thickening,
    intraretinal cysts and hyperreflective foci; DR grades foci (and for
    ``pdr`` a preretinal membrane, sometimes subretinal fluid); ``glaucoma``
    thin nerve fibre and ganglion cell layers; ``pathologic_myopia`` a steep
    staphyloma with thin choroid; ``cataract`` a weak, grainy signal;
    ``hypertensive_retinopathy`` focal nerve fibre swelling.

    The defaults give the line scan through the fovea.  For a slice of a
    volume, ``offset`` is its vertical position (flattening the foveal pit),
    ``presence(kind, count)`` gives each focal lesion of ``kind`` ("drusen",
    "intraretinal_cyst", "hyperreflective_focus", "subretinal_fluid",
    "preretinal_membrane", "rnfl_swelling") a size factor in [0, 1] (0: not in
    this slice), and ``noise_rng`` draws the speckle instead of ``rng``.
    """
    check_categories(labels)
    check_eye(eye)
    height, width = oct_shape(size)
    scan = _Scan(rng, tuple(labels), presence, offset, height, width, uc=0.5 + rng.uniform(-0.04, 0.04))
    # 1. thickness profiles, fractions of the height
    thick, curvature, depth, choroid = _thickness_profiles(scan, 1.0 if eye == "OD" else -1.0)
    # 2. boundaries in pixel rows, stacked up from Bruch's membrane
    tilt = domain.oct_tilt + rng.uniform(-0.03, 0.03)
    bruch, boundaries = _boundaries(scan, thick, curvature, depth, choroid, tilt)
    ilm = boundaries[0]
    # 3. reflectivity, then the lesions drawn on it
    img = _reflectivity(scan, bruch, boundaries, choroid)
    if "dme" in scan.labels:
        img = _add_cysts(scan, img, boundaries)
        _add_foci(scan, img, boundaries, int(rng.integers(3, 9)))
    elif scan.grade is not None:
        _add_foci(scan, img, boundaries, int(rng.integers(*{"mild_npdr": (0, 3), "moderate_npdr": (2, 6),
                                                            "severe_npdr": (4, 9), "pdr": (4, 9)}[scan.grade])))
    if scan.grade == "pdr":
        img = _add_membrane(scan, img, ilm)
    img = _add_vessels(scan, img, boundaries)
    # 4. acquisition: speckle, A-scan brightness, blur, gain
    out = _acquire(scan, img, domain, rng if noise_rng is None else noise_rng)
    central = int(np.clip(scan.uc * width, 0, width - 1))
    findings = Findings(
        modality="OCT", eye=eye, labels=scan.labels, lesions=tuple(scan.lesions),
        signs=tuple(scan.signs or ["normal_layers"]),
        extras={"central_thickness": round(float(bruch[central] - ilm[central]) / height, 4),
                "fovea_x": round(float(scan.uc), 4)},
    )
    return out, findings


class _LesionHeights:
    """Vertical position and extent of each focal lesion of a volume, drawn the first time a
    lesion kind is rendered (slices replay the same geometry, so they ask in the same order)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.placed: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def presence(self, kind: str, count: int, offset: float | np.ndarray) -> np.ndarray:
        """Size factors of the ``count`` lesions of ``kind`` at ``offset`` ([..., count])."""
        if kind not in self.placed:
            centre = np.clip(self._rng.normal(0.0, 0.35, count), -0.9, 0.9)
            self.placed[kind] = centre, self._rng.uniform(0.1, 0.25, count)
        centre, extent = self.placed[kind]
        shown = np.exp(-((np.asarray(offset)[..., None] - centre) / extent) ** 2)
        return np.where(shown >= _PRESENCE_FLOOR, shown, 0.0)


def render_oct_volume(rng: np.random.Generator, labels: tuple[str, ...], eye: str, size: int,
                      domain: SiteDomain = NEUTRAL_DOMAIN, n_slices: int = 16
                      ) -> tuple[np.ndarray, Findings]:
    """Render a macular volume: uint8 [S, H, W] raster of horizontal B-scans and its findings.

    Slice ``i`` is :func:`render_oct` at offset ``slice_offsets(n_slices)[i]``
    with the same geometry stream in every slice.  The streams come from
    ``SeedSequence(rng.integers(2**63)).spawn(2 + n_slices)``: geometry,
    lesion heights, then one speckle stream per slice.  The findings hold
    every lesion and sign seen in any slice (a lesion as drawn in the slice
    nearest its centre), ``extras["lesion_slices"]`` maps each focal lesion
    kind to the slice indices that show it, and ``central_thickness`` is
    measured in the slice nearest the fovea (``extras["central_slice"]``).
    """
    if n_slices < 2:
        raise ValueError(f"a volume needs at least 2 slices, got {n_slices}")
    geometry, heights_seed, *noise_seeds = np.random.SeedSequence(
        int(rng.integers(2**63))).spawn(2 + n_slices)
    heights = _LesionHeights(np.random.default_rng(heights_seed))
    offsets = slice_offsets(n_slices)
    scans, per_slice = [], []
    for offset, noise_seed in zip(offsets, noise_seeds):
        scan, findings = render_oct(
            np.random.default_rng(geometry), labels, eye, size, domain, offset=float(offset),
            presence=lambda kind, count, v=float(offset): heights.presence(kind, count, v),
            noise_rng=np.random.default_rng(noise_seed))
        scans.append(scan)
        per_slice.append(findings)

    lesions: list[Lesion] = []
    lesion_slices: dict[str, list[int]] = {}
    for kind, (centre, _) in heights.placed.items():
        shown = heights.presence(kind, len(centre), offsets)  # [S, count]
        if shown.any():
            lesion_slices[kind] = np.flatnonzero(shown.any(1)).tolist()
        for j in range(len(centre)):
            best = int(np.argmax(shown[:, j]))
            drawn = [lesion for lesion in per_slice[best].lesions if lesion.kind == kind]
            if shown[best, j] > 0 and drawn:  # kinds without a Lesion record are signs only
                lesions.append(drawn[int((shown[best, :j] > 0).sum())])
    signs = list(dict.fromkeys(s for f in per_slice for s in f.signs if s != "normal_layers"))
    central = int(np.argmin(np.abs(offsets)))
    findings = Findings(
        modality="OCT", eye=eye, labels=tuple(labels), lesions=tuple(lesions),
        signs=tuple(signs or ["normal_layers"]),
        extras={**per_slice[central].extras, "central_slice": central, "n_slices": n_slices,
                "lesion_slices": lesion_slices},
    )
    return np.stack(scans), findings
