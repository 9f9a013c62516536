"""Procedural phantom retina data set: fundus photographs, OCT B-scans and OCT volumes with
known lesions.

The embedded default data set of RetinaFL, so that every command runs on a
fresh machine without downloads.  For ``n`` training sites plus one held-out
site it renders colour fundus photographs (CFP) and paired macular OCT
B-scans and volumes of the same eyes, with lesions whose positions are
ground truth, short clinical reports written from those lesions, a per-site
acquisition shift (colour cast, blur, vignetting, field of view, JPEG) and
per-site label skew (Dirichlet class priors).  Output is the project's manifest layout; see
:mod:`.generate`.

Conventions: right eye (OD) has the optic disc to the right of the fovea in
the image, left eye (OS) to the left; an OCT carries its eye's labels.
"""

from .categories import CATEGORIES, CLINICAL_NAMES, DR_RETINOPATHY_GRADES
from .domain import NEUTRAL_DOMAIN, SiteDomain, sample_site_domain
from .findings import Findings, Lesion
from .fundus import render_fundus
from .generate import (
    GENERATOR_VERSION,
    MANIFEST_COLUMNS,
    VOLUME_COLUMNS,
    VOLUME_FORMATS,
    PhantomSpec,
    PhantomSummary,
    SiteSummary,
    generate_phantom,
    plan_site,
)
from .oct import oct_shape, render_oct, render_oct_volume, slice_offsets
from .reports import build_report

__all__ = [
    "CATEGORIES",
    "CLINICAL_NAMES",
    "DR_RETINOPATHY_GRADES",
    "GENERATOR_VERSION",
    "MANIFEST_COLUMNS",
    "NEUTRAL_DOMAIN",
    "VOLUME_COLUMNS",
    "VOLUME_FORMATS",
    "Findings",
    "Lesion",
    "PhantomSpec",
    "PhantomSummary",
    "SiteDomain",
    "SiteSummary",
    "build_report",
    "generate_phantom",
    "oct_shape",
    "plan_site",
    "render_fundus",
    "render_oct",
    "render_oct_volume",
    "sample_site_domain",
    "slice_offsets",
]
