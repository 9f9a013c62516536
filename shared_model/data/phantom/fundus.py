"""Procedural colour fundus photograph (CFP) with lesions of known position.

Painter's order: fundus background with choroidal pattern, macula, optic
disc and cup, vessels, lesions, cataract veil, then the site's camera
(:func:`~.domain.apply_fundus_domain`).  Colours are linear RGB in [0, 1]
chosen so that the field of view has the channel balance of real fundus
photographs (red >> green > blue).
"""

import numpy as np
from scipy import ndimage

from .anatomy import FundusLayout, sample_layout
from .canvas import Canvas
from .categories import check_categories, check_eye
from .domain import NEUTRAL_DOMAIN, SiteDomain, apply_fundus_domain
from .findings import Findings, Lesion
from .lesions import FundusPathology, plan_pathology
from .texture import ridges, smooth_noise
from .vessels import draw_av_nicks, draw_neovascular_tuft, draw_vessels, grow_vessel_tree

_FUNDUS = np.array([0.86, 0.34, 0.15], np.float32)
_CHOROID_PIGMENT = np.array([0.38, 0.13, 0.06], np.float32)  # intervascular spaces when tessellated
_DISC_RIM = np.array([0.98, 0.70, 0.42], np.float32)
_DISC_PALE = np.array([0.98, 0.86, 0.70], np.float32)
_CUP = np.array([1.0, 0.95, 0.80], np.float32)
_ATROPHY = np.array([0.93, 0.82, 0.64], np.float32)
_VEIL = np.array([0.88, 0.80, 0.64], np.float32)

# Vessels and blood darken multiplicatively so they follow the local shading
# (a vein over the pale disc stays red); pale lesions replace the colour.
_DARKENING: tuple[tuple[str, tuple[float, float, float], float, float], ...] = (
    # layer, per-channel factor, opacity, blur radius in px
    ("vein", (0.52, 0.22, 0.35), 0.9, 0.0),
    ("artery", (0.80, 0.45, 0.55), 0.85, 0.0),
    ("nv", (0.85, 0.30, 0.40), 0.9, 0.0),
    ("red", (0.58, 0.24, 0.32), 0.95, 0.3),
)
_PALE: tuple[tuple[str, tuple[float, float, float], float, float], ...] = (
    ("exudate", (1.0, 0.9, 0.42), 1.0, 0.0),
    ("drusen", (0.95, 0.80, 0.45), 0.9, 0.35),
    ("cws", (0.97, 0.94, 0.86), 0.85, 0.6),
)
_COPPER_ARTERY = (0.92, 0.55, 0.55)  # narrowed, light-reflecting arterioles of hypertension


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    img += (colour - img) * alpha[..., None]


def _background(rng: np.random.Generator, layout: FundusLayout, path: FundusPathology,
                r2: np.ndarray) -> np.ndarray:
    size = layout.size
    pigment = rng.uniform(0.82, 1.08) * rng.normal(1.0, 0.04, 3).astype(np.float32)
    if path.tessellation > 0.5:  # myopic fundus: thin, lightly pigmented RPE
        pigment = pigment * np.array([1.08, 1.12, 1.1], np.float32)
    shade = 1.0 + 0.08 * smooth_noise(rng, size, size, 3) - 0.2 * r2
    img = (_FUNDUS * pigment) * shade[..., None]
    network = ridges(smooth_noise(rng, size, size, 18), 1.9)
    spaces = path.tessellation * (1.0 - network)
    _blend(img, _CHOROID_PIGMENT, 0.65 * spaces)
    img *= (1.0 + 0.15 * path.tessellation * network)[..., None]
    return img


def _macula(img: np.ndarray, layout: FundusLayout, xx: np.ndarray, yy: np.ndarray) -> None:
    d2 = ((xx - layout.fovea[0]) ** 2 + (yy - layout.fovea[1]) ** 2) / layout.dd ** 2
    macula = np.exp(-d2 / (2 * 0.55 ** 2))
    foveola = np.exp(-d2 / (2 * 0.13 ** 2))
    img *= 1.0 - (0.30 * macula + 0.12 * foveola)[..., None] * np.array([1.0, 1.1, 0.7], np.float32)


def _disc(rng: np.random.Generator, img: np.ndarray, layout: FundusLayout,
          path: FundusPathology, xx: np.ndarray, yy: np.ndarray) -> None:
    r = layout.disc_radius
    ex = (xx - layout.disc[0]) / r
    ey = (yy - layout.disc[1]) / (r * path.disc_aspect)
    de = np.sqrt(ex * ex + ey * ey)
    if path.ppa_width_dd > 0:
        # Crescent widest on the temporal side, as in myopic peripapillary atrophy.
        towards_temporal = np.clip(-layout.nasal * ex / np.maximum(de, 1e-6), 0.0, 1.0)
        reach = 1.0 + path.ppa_width_dd * layout.dd / r * towards_temporal ** 0.8
        crescent = np.clip((reach - de) * r * 0.8 + 0.5, 0.0, 1.0)
        mottle = 1.0 - 0.12 * np.abs(smooth_noise(rng, layout.size, layout.size, 14))
        _blend(img, _ATROPHY * mottle[..., None], crescent)
    cup_r = path.cup_disc_ratio * r
    cx = layout.disc[0] - layout.nasal * 0.08 * r  # cups sit slightly temporal
    elongation = 1.1 if path.cup_disc_ratio >= 0.65 else 1.0  # glaucoma enlarges vertically first
    dc = np.sqrt(((xx - cx) / cup_r) ** 2
                 + ((yy - layout.disc[1]) / (cup_r * path.disc_aspect * elongation)) ** 2)
    cup = np.clip((1.0 - dc) / 0.3, 0.0, 1.0)
    if path.notch is not None:
        sign = 1.0 if path.notch == "inferior" else -1.0
        ny = layout.disc[1] + sign * 0.72 * r * path.disc_aspect
        dn = np.sqrt(((xx - cx) / (0.28 * r)) ** 2 + ((yy - ny) / (0.38 * r)) ** 2)
        cup = np.maximum(cup, np.clip((1.0 - dn) / 0.3, 0.0, 1.0))
    rim = _DISC_RIM + path.disc_pallor * (_DISC_PALE - _DISC_RIM)
    disc_colour = rim + cup[..., None] * (_CUP - rim)
    disc = np.clip((1.0 - de) * r * 0.8 + 0.5, 0.0, 1.0)
    img += (disc_colour - img) * disc[..., None]


def _draw_lesions(canvas: Canvas, rng: np.random.Generator, lesions: list[Lesion],
                  layout: FundusLayout) -> None:
    s = layout.size
    for lesion in lesions:
        x, y, r = lesion.x * s, lesion.y * s, lesion.radius * s
        if lesion.kind in ("microaneurysm", "hard_exudate"):
            canvas.ellipse("red" if lesion.kind == "microaneurysm" else "exudate", x, y, r)
        elif lesion.kind == "haemorrhage":  # blot: two overlapping ellipses, irregular outline
            canvas.ellipse("red", x, y, r, r * rng.uniform(0.7, 1.0))
            off = rng.normal(0.0, 0.4, 2) * r
            canvas.ellipse("red", x + off[0], y + off[1], 0.7 * r)
        elif lesion.kind == "flame_haemorrhage":  # along the nerve fibres: radial from the disc
            angle = np.arctan2(y - layout.disc[1], x - layout.disc[0])
            canvas.rotated_ellipse("red", x, y, r, max(0.3 * r, 0.6), angle)
        elif lesion.kind == "preretinal_haemorrhage":  # blood settles: flat top, round bottom
            canvas.rotated_ellipse("red", x, y, r, 0.75 * r, 0.0, lower_half=True)
        elif lesion.kind == "cotton_wool_spot":
            aspect, angle = rng.uniform(0.55, 0.85), rng.uniform(0, np.pi)
            canvas.rotated_ellipse("cws", x, y, r, r * aspect, angle)
        elif lesion.kind == "drusen":
            canvas.ellipse("drusen", x, y, r)
        elif lesion.kind == "neovascularisation":
            draw_neovascular_tuft(canvas, rng, x, y, r)


def render_fundus(rng: np.random.Generator, labels: tuple[str, ...], eye: str, size: int,
                  domain: SiteDomain = NEUTRAL_DOMAIN) -> tuple[np.ndarray, Findings]:
    """Render one CFP: uint8 [size, size, 3] and the findings actually drawn.

    ``labels`` are category keys (``normal`` or diseases, several allowed,
    e.g. ``("moderate_npdr", "dme")``); ``eye`` is ``"OD"`` or ``"OS"``.
    """
    check_categories(labels)
    check_eye(eye)
    layout = sample_layout(rng, eye, size, domain.fov_radius)
    vessels = grow_vessel_tree(rng, layout)
    path = plan_pathology(rng, tuple(labels), layout, vessels)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx = (xx - layout.centre[0]) / layout.fov_radius
    dy = (yy - layout.centre[1]) / layout.fov_radius
    r2 = dx * dx + dy * dy
    fov = np.clip((1.0 - np.sqrt(r2)) * layout.fov_radius + 0.5, 0.0, 1.0)

    img = _background(rng, layout, path, r2)
    _macula(img, layout, xx, yy)
    _disc(rng, img, layout, path, xx, yy)

    canvas = Canvas(size)
    draw_vessels(canvas, vessels, path.artery_scale, path.beading)
    nicks = draw_av_nicks(canvas, rng, vessels, path.av_nicks) if path.av_nicks else []
    _draw_lesions(canvas, rng, path.lesions, layout)
    for layer, factor, opacity, blur in _DARKENING:
        if layer == "artery" and path.artery_scale < 1.0:
            factor = _COPPER_ARTERY
        alpha = canvas.coverage(layer, blur) * opacity
        img *= 1.0 - alpha[..., None] * (1.0 - np.asarray(factor, np.float32))
    for layer, colour, opacity, blur in _PALE:
        _blend(img, np.asarray(colour, np.float32), canvas.coverage(layer, blur) * opacity)

    if path.haze > 0:
        # Lens opacity: scattered light blurs detail and adds a whitish veil.
        sigma = 0.02 * size
        blurred = ndimage.gaussian_filter(img * fov[..., None], (sigma, sigma, 0))
        weight = ndimage.gaussian_filter(fov, sigma)
        img = blurred / np.maximum(weight, 1e-3)[..., None]
        veil = _VEIL * (0.8 + 0.2 * np.clip(1.0 - r2, 0.0, 1.0))[..., None]
        img = img * (1.0 - path.haze) + veil * path.haze
    img *= fov[..., None]

    out = apply_fundus_domain(img, fov, dx, dy, domain, rng)
    findings = Findings(
        modality="CFP", eye=eye, labels=tuple(labels), lesions=tuple(path.lesions),
        signs=tuple(path.signs), cup_disc_ratio=path.cup_disc_ratio, notch=path.notch,
        extras={"haze": round(path.haze, 3), "tessellation": round(path.tessellation, 3),
                "ppa_width_dd": round(path.ppa_width_dd, 3), "av_nicks": float(len(nicks)),
                "artery_scale": round(path.artery_scale, 3)},
    )
    return out, findings
