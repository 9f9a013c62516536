"""Short English clinical reports written from the findings that were actually drawn.

Wording varies with the random generator (several phrasings per finding, in
British spelling as in the knowledge dictionary), so a text tower cannot
learn one template per class; every sentence still states something true of
the image.
"""

import numpy as np

from .categories import CLINICAL_NAMES, DR_RETINOPATHY_GRADES
from .findings import Findings

_SIDE = {"OD": "right", "OS": "left"}
_QUADRANT_ADVERB = {
    "superotemporal": "superotemporally",
    "inferotemporal": "inferotemporally",
    "superonasal": "superonasally",
    "inferonasal": "inferonasally",
}
_CFP_LESION_NOUNS = {
    "microaneurysm": ("microaneurysms", "microaneurysm"),
    "haemorrhage": ("dot-blot haemorrhages", "dot-blot haemorrhage"),
    "flame_haemorrhage": ("flame-shaped haemorrhages", "flame-shaped haemorrhage"),
    "hard_exudate": ("hard exudates", "hard exudate"),
    "cotton_wool_spot": ("cotton-wool spots", "cotton-wool spot"),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _amount(rng: np.random.Generator, n: int) -> str:
    if n == 1:
        return _pick(rng, ("a single", "one"))
    if n <= 4:
        return _pick(rng, ("a few", "scattered", str(n)))
    if n <= 10:
        return _pick(rng, ("several", "multiple", str(n)))
    return _pick(rng, ("numerous", "many", "multiple"))


def _where(rng: np.random.Generator, regions: list[str]) -> str:
    quadrants = [r for r in regions if r in _QUADRANT_ADVERB]
    if len(set(quadrants)) == 4:
        return _pick(rng, ("in all four quadrants", "throughout all four quadrants"))
    if "macula" in regions:
        return _pick(rng, ("at the macula", "around the fovea", "in the macular area"))
    if "peripapillary" in regions:
        return _pick(rng, ("around the optic disc", "in the peripapillary retina"))
    if len(quadrants) == 1:
        return _QUADRANT_ADVERB[quadrants[0]]
    if quadrants:
        names = sorted(set(quadrants))
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        return _pick(rng, ("at the posterior pole", f"in the {listed} quadrants"))
    return ""


def _impression(rng: np.random.Generator, labels: tuple[str, ...], modality: str) -> str:
    if labels == ("normal",):
        what = "normal fundus" if modality == "CFP" else "normal macular OCT"
    else:
        names = [CLINICAL_NAMES[label] for label in labels]
        what = names[0] + "".join(" with " + name for name in names[1:])
    return _pick(rng, ("Impression: {}.", "Diagnosis: {}.", "Conclusion: {}.")).format(what)


def _cfp_sentences(f: Findings, rng: np.random.Generator) -> list[str]:
    side = _SIDE[f.eye]
    out = [_pick(rng, (
        f"Colour fundus photograph of the {side} eye.",
        f"Fundus photograph, {side} eye ({f.eye}).",
        f"{side.capitalize()} eye, 45-degree colour fundus image centred on the macula.",
    ))]
    signs = set(f.signs)
    out += _cfp_disc_sentences(f, signs, rng)
    out += _cfp_vessel_sentences(f, signs, rng)
    out += _cfp_lesion_sentences(f, signs, rng)
    if f.labels == ("normal",):
        out.append(_pick(rng, (
            "Normal vessels and macula; no haemorrhages, exudates or other lesions.",
            "The retina is healthy with normal vessel calibre and a normal foveal reflex.",
            "No signs of retinopathy.",
        )))
    out.append(_impression(rng, f.labels, "CFP"))
    return out


def _cfp_disc_sentences(f: Findings, signs: set[str], rng: np.random.Generator) -> list[str]:
    """The view (media haze), the optic disc and a myopic fundus."""
    out = []
    if "media_haze" in signs:
        out.append(_pick(rng, (
            "Hazy view from a media opacity; fundus details are blurred with reduced contrast.",
            "A diffuse whitish veil from lens opacity covers the image; vessels are faint.",
        )))
    if "large_cup" in signs:
        notch = f" with {f.notch} notching of the neuroretinal rim" if f.notch else ""
        out.append(_pick(rng, (
            f"The optic disc is cupped, cup-to-disc ratio about {f.cup_disc_ratio:.1f}{notch}.",
            f"Enlarged optic cup (vertical cup-to-disc ratio {f.cup_disc_ratio:.1f}){notch}; "
            "pale disc.",
        )))
    elif "tilted_disc" not in signs and rng.uniform() < 0.5:
        out.append(f"Optic disc healthy with a cup-to-disc ratio of {f.cup_disc_ratio:.1f}.")
    if "tessellation" in signs:
        out.append(_pick(rng, (
            "Tessellated fundus with the choroidal vessels clearly visible; tilted disc with a "
            "large temporal peripapillary atrophy crescent.",
            "Tigroid fundus from thinning of the retinal pigment epithelium, with a tilted disc "
            "and a wide pale crescent of peripapillary atrophy temporally.",
        )))
    return out


def _cfp_vessel_sentences(f: Findings, signs: set[str], rng: np.random.Generator) -> list[str]:
    """Arterioles, veins, new vessels and a pre-retinal haemorrhage."""
    out = []
    if "arteriolar_narrowing" in signs:
        out.append(_pick(rng, (
            "Generalised arteriolar narrowing with arteriovenous nicking.",
            "Attenuated, light-reflecting arterioles and arteriovenous crossing changes "
            "(AV nicking).",
        )))
    if "venous_beading" in signs:
        out.append(_pick(rng, ("Venous beading is present.", "Beaded retinal veins.")))
    for region in f.regions("neovascularisation"):
        where = _QUADRANT_ADVERB.get(region, "along an arcade")
        out.append("Neovascularisation at the disc (NVD)." if region == "disc" else
                   f"Neovascularisation elsewhere (NVE) {where}.")
    if f.count("preretinal_haemorrhage"):
        out.append(_pick(rng, ("A boat-shaped pre-retinal haemorrhage.",
                               "Pre-retinal haemorrhage with a fluid level.")))
    return out


def _cfp_lesion_sentences(f: Findings, signs: set[str], rng: np.random.Generator) -> list[str]:
    """Each kind of focal lesion with its amount and place, then drusen."""
    out = []
    for kind, (plural, singular) in _CFP_LESION_NOUNS.items():
        n = f.count(kind)
        if not n:
            continue
        if kind == "hard_exudate" and "circinate_exudates" in signs:
            out.append(_pick(rng, ("A circinate ring of hard exudates around the fovea.",
                                   "Hard exudates in a ring and clusters at the macula.")))
            continue
        if kind == "hard_exudate" and "macular_star" in signs:
            out.append("Hard exudates form a macular star.")
            continue
        noun = singular if n == 1 else plural
        where = _where(rng, f.regions(kind))
        amount = _amount(rng, n)
        out.append(f"{amount[0].upper()}{amount[1:]} {noun}{' ' + where if where else ''}.")
    if f.count("drusen"):
        out.append(_pick(rng, (
            f"{_amount(rng, f.count('drusen')).capitalize()} soft yellow drusen at the macula.",
            "Confluent and discrete drusen clustered around the fovea.",
        )))
    return out


def _oct_sentences(f: Findings, rng: np.random.Generator) -> list[str]:
    side = _SIDE[f.eye]
    if "n_slices" in f.extras:  # a volume: a raster of B-scans across the macula
        n = f.extras["n_slices"]
        out = [_pick(rng, (
            f"Macular OCT volume of the {side} eye, {n} B-scans.",
            f"Spectral-domain OCT macular cube, {n} horizontal B-scans, {side} eye.",
            f"OCT volume scan of the {side} macula ({f.eye}).",
        ))]
    else:
        out = [_pick(rng, (
            f"Macular OCT B-scan of the {side} eye.",
            f"Spectral-domain OCT, horizontal line scan through the fovea, {side} eye.",
            f"OCT of the {side} macula ({f.eye}).",
        ))]
    signs = set(f.signs)
    if "signal_attenuation" in signs:
        out.append(_pick(rng, ("Weak, grainy signal consistent with media opacity.",
                               "Poor signal strength with reduced layer contrast.")))
    if "posterior_staphyloma" in signs:
        out.append(_pick(rng, ("Steep posterior curvature (staphyloma) with a thin choroid.",
                               "Marked myopic posterior bowing and choroidal thinning.")))
    if "retinal_thickening" in signs:
        n = f.count("intraretinal_cyst")
        out.append(_pick(rng, (
            f"{_amount(rng, n).capitalize()} intraretinal cystoid fluid spaces with central "
            "retinal thickening.",
            "Loss of the foveal contour with intraretinal cysts in the nuclear layers.",
        )))
    if "subretinal_fluid" in signs:
        out.append(_pick(rng, ("A shallow pocket of subretinal fluid.",
                               "Subretinal fluid under the fovea.")))
    if "drusen" in signs:
        n = f.count("drusen")
        out.append(_pick(rng, (
            f"{_amount(rng, n).capitalize()} drusen elevating the retinal pigment epithelium.",
            "Dome-shaped RPE elevations consistent with drusen.",
        )))
    if "hyperreflective_foci" in signs:
        out.append(_pick(rng, ("Scattered intraretinal hyperreflective foci.",
                               "Hyperreflective dots in the inner retina.")))
    if "preretinal_membrane" in signs:
        out.append(_pick(rng, (
            "A hyperreflective preretinal membrane consistent with fibrovascular proliferation.",
            "Epiretinal fibrovascular tissue lifting from the surface.",
        )))
    if "rnfl_thinning" in signs:
        out.append(_pick(rng, ("Thinning of the retinal nerve fibre and ganglion cell layers.",
                               "Reduced inner retinal thickness (RNFL and GCL).")))
    if "rnfl_swelling" in signs:
        out.append("Focal hyperreflective swelling of the nerve fibre layer (cotton-wool spot).")
    if "normal_layers" in signs:
        out.append(_pick(rng, ("Normal foveal contour with well-defined retinal layers.",
                               "Retinal layers intact; ellipsoid zone and RPE continuous.")))
        if f.labels != ("normal",):
            out.append("No macular abnormality on this scan; diagnosis from the fundus "
                       "examination.")
    if any(label in DR_RETINOPATHY_GRADES for label in f.labels) and "retinal_thickening" not in signs:
        out.append("No macular oedema.")
    out.append(_impression(rng, f.labels, "OCT"))
    return out


def build_report(findings: Findings, rng: np.random.Generator) -> str:
    """One paragraph describing ``findings`` (CFP or OCT) and ending with an impression."""
    sentences = (_cfp_sentences if findings.modality == "CFP" else _oct_sentences)(findings, rng)
    return " ".join(sentences)
