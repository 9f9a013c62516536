"""Expert-knowledge dictionary of retinal findings, and label normalisation.

Follows the knowledge-dictionary idea of FLAIR (Silva-Rodriguez et al., "A
Foundation Language-Image Model of the Retina", Medical Image Analysis 2025,
arXiv:2308.07898): every category is described by a few short clinical
descriptor phrases, so that text supervision and zero-shot prompts carry what a
grader looks for, not just a class name. The category set covers the retinal
categories of FLAIR's dictionary (plus OCT findings); all descriptor text is
written for RetinaFL.

``normal`` and ``no_dr`` are different categories on purpose:

- ``normal`` means no abnormality of any kind (the "NORMAL" class of OCT and
  multi-disease data sets);
- ``no_dr`` is grade 0 of the diabetic-retinopathy scale (``DR_GRADES``): no
  diabetic lesions, which says nothing about other disease (an eye graded
  ``no_dr`` may still have drusen or a large cup). Grading tasks use ``no_dr``,
  never ``normal``.

Public data sets spell labels many ways ("CNV", "Diabetic macular edema",
"noDR", "DN"); ``normalise_label`` maps them to the snake_case keys of
``CATEGORIES`` and fails loudly, with suggestions, on anything else.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# Ordinal diabetic-retinopathy grades (ICDR scale, 0..4), in order; the
# evaluator scores them with quadratic-weighted kappa.
DR_GRADES: tuple[str, ...] = ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")

# Named ordinal grading tasks: task name -> category keys from lowest grade up.
GRADING_TASKS: Mapping[str, tuple[str, ...]] = MappingProxyType({"diabetic_retinopathy": DR_GRADES})

# Anatomical / clinical groups a category may belong to.
GROUPS: tuple[str, ...] = (
    "normal",
    "image quality",
    "diabetic retinopathy",
    "lesion",
    "macula",
    "OCT",
    "optic disc",
    "vascular",
    "choroid",
    "vitreous",
    "media",
    "peripheral retina",
    "myopia",
    "retinal dystrophy",
    "inflammation",
    "congenital",
    "treatment",
    "tumour",
)

_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_MIN_DESCRIPTORS, _MAX_DESCRIPTORS = 3, 8


@dataclass(frozen=True)
class Grade:
    """Position of a category on an ordinal scale named in ``GRADING_TASKS``."""

    task: str
    level: int


@dataclass(frozen=True)
class Category:
    """One entry of the knowledge dictionary.

    ``descriptors`` are the signs of the finding as seen on colour fundus
    photographs (or modality-neutral ones); ``modality_descriptors`` holds
    replacements for modalities where the finding looks different, e.g. OCT.
    """

    key: str
    display_name: str
    group: str
    modalities: frozenset[str]
    descriptors: tuple[str, ...]
    grade: Grade | None = None
    modality_descriptors: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        where = f"category {self.key!r}"
        if not _KEY_PATTERN.match(self.key):
            raise ValueError(f"{where}: key must be snake_case")
        if not self.display_name.strip():
            raise ValueError(f"{where}: empty display name")
        if self.group not in GROUPS:
            raise ValueError(f"{where}: unknown group {self.group!r}; expected one of {GROUPS}")
        for modality, phrases in ((None, self.descriptors), *self.modality_descriptors):
            if modality is not None and modality not in self.modalities:
                raise ValueError(f"{where}: descriptors for {modality!r}, which is not in its modalities")
            if not _MIN_DESCRIPTORS <= len(phrases) <= _MAX_DESCRIPTORS:
                raise ValueError(
                    f"{where}: needs {_MIN_DESCRIPTORS}-{_MAX_DESCRIPTORS} descriptors, got {len(phrases)}"
                )
            if len(set(phrases)) != len(phrases):
                raise ValueError(f"{where}: repeated descriptor")
            # Captions join findings with commas; a comma inside a descriptor
            # would blur where one finding ends and the next begins.
            if any(not p.strip() or "," in p for p in phrases):
                raise ValueError(f"{where}: descriptors must be non-empty and contain no commas")
        if self.grade is not None:
            scale = GRADING_TASKS.get(self.grade.task, ())
            if not 0 <= self.grade.level < len(scale) or scale[self.grade.level] != self.key:
                raise ValueError(f"{where}: grade {self.grade} disagrees with GRADING_TASKS")

    def descriptors_for(self, modality: str) -> tuple[str, ...]:
        """Descriptors to use for images of ``modality`` (a modality code such as "OCT")."""
        return dict(self.modality_descriptors).get(modality, self.descriptors)


def _category(
    key: str,
    display_name: str,
    group: str,
    modalities: str,
    descriptors: tuple[str, ...],
    *,
    oct: tuple[str, ...] = (),
    grade: int | None = None,
) -> Category:
    """Compact constructor for the table below (modalities as a space-separated string)."""
    return Category(
        key=key,
        display_name=display_name,
        group=group,
        modalities=frozenset(modalities.split()),
        descriptors=descriptors,
        grade=None if grade is None else Grade("diabetic_retinopathy", grade),
        modality_descriptors=(("OCT", oct),) if oct else (),
    )


_ALL = "CFP OCT FFA FAF ICGA UWF IR OCTA"

_CATEGORY_LIST: tuple[Category, ...] = (
    # --- normal and image quality -------------------------------------------------
    _category(
        "normal", "normal retina", "normal", _ALL,
        ("a healthy fundus with no visible pathology",
         "a pink optic disc with a small central cup and crisp margins",
         "a clear macula with a bright foveal reflex",
         "retinal vessels of normal calibre and course",
         "no haemorrhages or exudates or pigment changes anywhere"),
        oct=("a normal foveal pit with all retinal layers intact",
             "a continuous ellipsoid zone over a smooth pigment epithelium band",
             "a dry retina without intraretinal or subretinal fluid",
             "normal central retinal thickness and contour"),
    ),
    _category(
        "ungradable", "ungradable image", "image quality", _ALL,
        ("an image too blurred to assess the retina",
         "severe under- or over-exposure hiding the fundus",
         "artefacts covering both the optic disc and the macula",
         "eyelash or eyelid shadow across much of the field"),
    ),
    # --- diabetic retinopathy (ICDR grades) ---------------------------------------
    _category(
        "no_dr", "no diabetic retinopathy", "diabetic retinopathy", "CFP UWF FFA",
        ("a diabetic eye without any signs of retinopathy",
         "a diabetic fundus free of microaneurysms",
         "no retinal bleeding or lipid deposits in a diabetic patient",
         "a screening photograph with no diabetic lesions"),
        grade=0,
    ),
    _category(
        "mild_npdr", "mild non-proliferative diabetic retinopathy", "diabetic retinopathy", "CFP UWF FFA",
        ("microaneurysms only without any other lesion",
         "a handful of isolated microaneurysms",
         "scattered pinpoint red dots and nothing more",
         "the earliest visible stage of diabetic retinal damage"),
        grade=1,
    ),
    _category(
        "moderate_npdr", "moderate non-proliferative diabetic retinopathy", "diabetic retinopathy", "CFP UWF FFA",
        ("dot and blot haemorrhages in fewer than four quadrants",
         "microaneurysms with scattered hard exudates",
         "occasional cotton-wool spots among intraretinal bleeds",
         "more than microaneurysms but short of severe disease",
         "diabetic lesions without venous beading or new vessels"),
        grade=2,
    ),
    _category(
        "severe_npdr", "severe non-proliferative diabetic retinopathy", "diabetic retinopathy", "CFP UWF FFA",
        ("more than twenty intraretinal haemorrhages in each of four quadrants",
         "definite venous beading in two or more quadrants",
         "prominent intraretinal microvascular abnormalities in one quadrant or more",
         "extensive retinal ischaemia without new vessel growth",
         "a fundus meeting the 4-2-1 rule"),
        grade=3,
    ),
    _category(
        "pdr", "proliferative diabetic retinopathy", "diabetic retinopathy", "CFP UWF FFA OCTA",
        ("new vessels on the optic disc or elsewhere in a diabetic eye",
         "bleeding into the vitreous or preretinal space from fragile new vessels",
         "fibrovascular proliferation along the vascular arcades",
         "tractional membranes from advanced diabetic disease",
         "the most advanced stage of diabetic retinopathy"),
        grade=4,
    ),
    _category(
        "diabetic_retinopathy", "diabetic retinopathy", "diabetic retinopathy", "CFP UWF FFA OCTA",
        ("retinal microvascular damage caused by diabetes",
         "a mixture of microaneurysms and blot haemorrhages and exudates",
         "diabetic changes of the small retinal vessels of any severity"),
    ),
    _category(
        "dme", "diabetic macular oedema", "diabetic retinopathy", "CFP OCT FFA",
        ("hard exudates clustered within one disc diameter of the fovea",
         "retinal thickening at the centre of the macula in a diabetic eye",
         "a circinate ring of lipid surrounding the macula",
         "leaking microaneurysms close to the fovea"),
        oct=("diffuse macular thickening with intraretinal cysts in a diabetic eye",
             "hyperreflective foci from lipid in the outer plexiform layer",
             "a foveal contour lost to accumulated fluid",
             "cystoid spaces in the inner nuclear and outer plexiform layers"),
    ),
    _category(
        "no_dme", "no diabetic macular oedema", "diabetic retinopathy", "CFP OCT FFA",
        ("no lipid deposits within reach of the fovea",
         "a dry flat macula in a diabetic eye",
         "diabetic fundus without macular involvement"),
        oct=("normal foveal thickness in a diabetic patient",
             "no cysts or fluid in a diabetic macula",
             "a preserved foveal depression without diabetic swelling"),
    ),
    # --- individual lesions ----------------------------------------------------
    _category(
        "microaneurysms", "microaneurysms", "lesion", "CFP UWF FFA",
        ("tiny round red dots at capillary level",
         "pinpoint red lesions with sharp edges",
         "hyperfluorescent pinpoints on angiography",
         "saccular outpouchings of retinal capillaries"),
    ),
    _category(
        "haemorrhages", "retinal haemorrhages", "lesion", "CFP UWF FFA",
        ("dark red blotches within the retina",
         "flame-shaped bleeds in the nerve fibre layer",
         "dot and blot bleeding in the deeper retina",
         "patches of blood blocking the view of the choroid"),
    ),
    _category(
        "hard_exudates", "hard exudates", "lesion", "CFP UWF OCT",
        ("sharply defined yellow-white lipid deposits",
         "waxy yellow spots in the outer retina",
         "glistening lipid plaques arranged in clusters",
         "bright yellow residue of leaked lipoprotein"),
    ),
    _category(
        "cotton_wool_spots", "cotton-wool spots", "lesion", "CFP UWF",
        ("fluffy white patches with feathery borders",
         "pale swellings of the nerve fibre layer",
         "small whitish cloud-like nerve fibre infarcts near the vessels",
         "ill-defined grey-white soft exudates"),
    ),
    _category(
        "neovascularisation", "retinal neovascularisation", "lesion", "CFP UWF FFA OCTA",
        ("fine tufts of abnormal new vessels",
         "a lacy net of fragile vessels on the retinal surface",
         "new vessels sprouting from the disc or from the veins",
         "profuse late leakage from new vessels on angiography"),
    ),
    _category(
        "irma", "intraretinal microvascular abnormalities", "lesion", "CFP UWF FFA OCTA",
        ("dilated tortuous capillary shunts inside the retina",
         "abnormal intraretinal vessel loops that do not leak",
         "burgundy intraretinal vessel branching beside capillary dropout"),
    ),
    _category(
        "venous_beading", "venous beading", "lesion", "CFP UWF FFA",
        ("sausage-like segmental dilation of retinal veins",
         "irregular venous calibre with alternating constrictions",
         "a string-of-beads look along a major vein"),
    ),
    # --- macula ----------------------------------------------------------------
    _category(
        "drusen", "drusen", "macula", "CFP OCT FAF IR UWF",
        ("round yellow-white deposits beneath the retina",
         "clustered pale spots scattered around the macula",
         "small and intermediate yellowish dots at the posterior pole",
         "soft deposits with indistinct borders under the retina"),
        oct=("small dome-shaped bumps of the retinal pigment epithelium",
             "hyperreflective material between the pigment epithelium and Bruch's membrane",
             "an undulating pigment epithelium band with focal elevations",
             "sub-RPE deposits without overlying fluid"),
    ),
    _category(
        "amd", "age-related macular degeneration", "macula", _ALL,
        ("drusen with pigment changes at the macula of an older eye",
         "degenerative changes of the central retina in the elderly",
         "large confluent drusen with RPE mottling",
         "age-related loss of macular integrity"),
        oct=("large drusen with pigment epithelium irregularity in an older patient",
             "a drusenoid pigment epithelial detachment at the macula",
             "outer retinal thinning over sub-RPE deposits"),
    ),
    _category(
        "cnv", "choroidal neovascularisation", "macula", "CFP OCT FFA ICGA OCTA",
        ("a grey-green membrane beneath the macula",
         "subretinal blood with exudation at the macula",
         "a raised lesion under the fovea fringed by blood",
         "neovascular wet macular degeneration"),
        oct=("a fibrovascular pigment epithelial detachment with subretinal fluid",
             "subretinal hyperreflective material beneath the fovea",
             "irregular RPE elevation with overlying fluid and retinal thickening",
             "a disrupted pigment epithelium with a neovascular complex above it"),
    ),
    _category(
        "geographic_atrophy", "geographic atrophy", "macula", "CFP OCT FAF IR",
        ("a sharply demarcated area of RPE loss showing choroidal vessels",
         "a well-defined hypopigmented patch at the macula",
         "late dry macular degeneration",
         "a dark hypoautofluorescent lesion on autofluorescence"),
        oct=("signal hypertransmission into the choroid beneath lost pigment epithelium",
             "loss of the outer retina and RPE over a sharply bordered zone",
             "a thinned atrophic macula without fluid"),
    ),
    _category(
        "pigment_epithelial_detachment", "pigment epithelial detachment", "macula", "CFP OCT FFA ICGA",
        ("a large smooth elevation of the RPE off Bruch's membrane",
         "an optically empty space beneath a raised pigment epithelium",
         "a serous or drusenoid or haemorrhagic detachment of the RPE",
         "a round orange blister at the macula that pools dye on angiography"),
    ),
    _category(
        "rpe_changes", "retinal pigment epithelium changes", "macula", "CFP FAF OCT IR",
        ("mottled pigmentation of the pigment epithelium",
         "areas of RPE hypopigmentation and pigment clumping",
         "granular pigment irregularity at the posterior pole"),
    ),
    _category(
        "macular_hole", "macular hole", "macula", "CFP OCT IR",
        ("a round red defect at the centre of the fovea",
         "a small punched-out lesion at the fovea with a grey cuff",
         "yellow dots at the base of a foveal defect"),
        oct=("a full-thickness gap in the neurosensory retina at the fovea",
             "hole edges with cystic spaces and raised margins",
             "an operculum floating above a foveal defect"),
    ),
    _category(
        "epiretinal_membrane", "epiretinal membrane", "macula", "CFP OCT IR",
        ("a cellophane-like sheen over the macula",
         "wrinkling of the inner retinal surface",
         "small vessels straightened and distorted around the fovea"),
        oct=("a hyperreflective line on the inner retinal surface",
             "loss of the foveal depression under surface traction",
             "retinal folds beneath a contracted surface membrane"),
    ),
    _category(
        "vitreomacular_traction", "vitreomacular traction", "macula", "OCT",
        ("a vitreous attachment at the fovea pulling the retina upward",
         "a partly detached posterior hyaloid tenting the fovea",
         "distortion of the foveal contour from vitreous pull"),
    ),
    _category(
        "macular_oedema", "macular oedema", "macula", "CFP OCT FFA",
        ("a swollen central retina from fluid of any cause",
         "a blurred foveal reflex with macular swelling",
         "dye pooling at the macula on late angiography"),
        oct=("increased central retinal thickness from fluid",
             "a thickened macula with fluid in several layers",
             "a flattened foveal pit over oedematous retina"),
    ),
    _category(
        "cystoid_macular_oedema", "cystoid macular oedema", "macula", "CFP OCT FFA",
        ("a petaloid leakage pattern around the fovea on angiography",
         "honeycomb cysts radiating from the fovea",
         "loss of the foveal reflex with cystic changes"),
        oct=("large petal-shaped hyporeflective cysts in the central macula",
             "radially arranged cysts that bulge the fovea forward",
             "confluent central cysts with a thin roof of inner retina"),
    ),
    _category(
        "central_serous_chorioretinopathy", "central serous chorioretinopathy", "macula",
        "CFP OCT FFA FAF ICGA",
        ("a round blister of serous detachment at the macula",
         "a smokestack or ink-blot leak on angiography",
         "a dull foveal reflex in a younger adult"),
        oct=("a dome of clear subretinal fluid under the fovea",
             "a small serous pigment epithelial detachment next to subretinal fluid",
             "a thick choroid beneath a neurosensory detachment"),
    ),
    _category(
        "macular_scar", "macular scar", "macula", "CFP OCT FAF",
        ("a white fibrous scar at the macula",
         "disciform scarring with surrounding pigment",
         "an end-stage fibrotic lesion replacing the central retina"),
        oct=("hyperreflective subretinal fibrous tissue under the fovea",
             "a disorganised outer retina over a dense scar",
             "a flat thickened hyperreflective band where the fovea should be"),
    ),
    _category(
        "parafoveal_telangiectasia", "parafoveal telangiectasia", "macula", "CFP OCT FFA OCTA FAF",
        ("greyish loss of retinal transparency temporal to the fovea",
         "right-angled venules diving into the parafovea",
         "crystalline glints near the fovea with dilated capillaries"),
        oct=("inner lamellar cavities at the fovea",
             "an ellipsoid zone break temporal to the fovea",
             "hyperreflective pigment plaques in the inner retina near the fovea"),
    ),
    _category(
        "maculopathy", "maculopathy", "macula", "CFP OCT",
        ("a non-specific abnormality of the macula",
         "a disturbed macular reflex with subtle pigment changes",
         "an unclassified central retinal lesion"),
    ),
    _category(
        "yellow_white_flecks", "yellow-white flecks", "macula", "CFP FAF UWF",
        ("pisciform yellow flecks at the level of the RPE",
         "fish-tail shaped pale deposits around the macula",
         "multiple discrete flecks spread across the posterior pole"),
    ),
    # --- OCT-only findings -------------------------------------------------------
    _category(
        "intraretinal_fluid", "intraretinal fluid", "OCT", "OCT",
        ("hyporeflective cystoid spaces within the retinal layers",
         "fluid pockets in the inner nuclear layer",
         "retinal swelling from cysts inside the neurosensory retina"),
    ),
    _category(
        "subretinal_fluid", "subretinal fluid", "OCT", "OCT",
        ("a hyporeflective space between the retina and the pigment epithelium",
         "neurosensory retina lifted off the RPE by fluid",
         "a dark wedge of fluid beneath the photoreceptors"),
    ),
    # --- optic disc --------------------------------------------------------------
    _category(
        "glaucoma", "glaucoma", "optic disc", "CFP OCT UWF",
        ("an enlarged optic cup with a high cup-to-disc ratio",
         "thinning or notching of the neuroretinal rim",
         "vessels bending sharply over a deep cup margin",
         "arcuate nerve fibre layer defects",
         "a splinter haemorrhage at the disc margin"),
        oct=("thinning of the peripapillary retinal nerve fibre layer",
             "loss of ganglion cell layer thickness at the macula",
             "a deep excavated optic nerve head with a thin rim"),
    ),
    _category(
        "peripapillary_atrophy", "peripapillary atrophy", "optic disc", "CFP OCT IR",
        ("a crescent of atrophy bordering the optic disc",
         "a pale zone around the disc with exposed sclera",
         "irregular pigment and chorioretinal thinning beside the disc"),
    ),
    _category(
        "papilledema", "papilloedema", "optic disc", "CFP OCT UWF",
        ("bilateral disc swelling from raised intracranial pressure",
         "blurred elevated disc margins hiding the vessels that cross them",
         "engorged veins and peripapillary bleeds around a swollen disc",
         "a swollen disc that has lost its central cup"),
    ),
    _category(
        "optic_disc_oedema", "optic disc oedema", "optic disc", "CFP OCT UWF",
        ("a swollen optic nerve head of any cause",
         "an elevated hyperaemic disc with indistinct edges",
         "disc swelling spreading into the surrounding retina"),
    ),
    _category(
        "optic_atrophy", "optic atrophy", "optic disc", "CFP OCT UWF",
        ("a uniformly pale chalky-white optic disc",
         "few small vessels left on the disc surface",
         "a thin nerve fibre layer around a pale disc"),
    ),
    _category(
        "aion", "anterior ischaemic optic neuropathy", "optic disc", "CFP OCT",
        ("sectoral pale disc swelling after sudden visual loss",
         "a small crowded disc with segmental oedema",
         "altitudinal nerve fibre damage from disc ischaemia"),
    ),
    _category(
        "tilted_disc", "tilted disc", "optic disc", "CFP OCT UWF",
        ("an oval obliquely inserted optic disc",
         "a disc with one raised margin and one flat margin",
         "an inferonasal crescent next to a rotated disc"),
    ),
    _category(
        "optic_disc_pit_maculopathy", "optic disc pit maculopathy", "optic disc", "CFP OCT",
        ("a small grey oval depression in the disc rim",
         "serous macular detachment connected to a pit in the disc",
         "schisis-like fluid tracking from the disc to the macula"),
    ),
    _category(
        "dragged_disc", "dragged disc", "optic disc", "CFP UWF",
        ("a disc with its vessels pulled straight toward the periphery",
         "temporal dragging of the disc and macula",
         "a distorted disc displaced by peripheral traction"),
    ),
    _category(
        "congenital_disc_anomaly", "congenital optic disc anomaly", "optic disc", "CFP OCT",
        ("an optic disc of abnormal shape or size since birth",
         "a funnel-shaped excavated disc with radial vessels",
         "a small hypoplastic disc with a double-ring sign"),
    ),
    # --- vascular ----------------------------------------------------------------
    _category(
        "hypertensive_retinopathy", "hypertensive retinopathy", "vascular", "CFP UWF",
        ("generalised narrowing of the retinal arterioles",
         "arteriovenous nicking at vessel crossings",
         "copper- or silver-wiring of the arterioles",
         "flame bleeds and cotton-wool spots in a hypertensive patient",
         "a swollen disc with a macular star in malignant hypertension"),
    ),
    _category(
        "haemorrhagic_retinopathy", "haemorrhagic retinopathy", "vascular", "CFP UWF",
        ("numerous scattered bleeds without diabetic features",
         "widespread intraretinal bleeding from a blood disorder",
         "white-centred haemorrhages in systemic illness"),
    ),
    _category(
        "brvo", "branch retinal vein occlusion", "vascular", "CFP UWF FFA OCT",
        ("bleeding confined to the territory of one branch vein",
         "a wedge of flame haemorrhages beyond an arteriovenous crossing",
         "one dilated tortuous vein draining a haemorrhagic sector",
         "sectoral retinal swelling with cotton-wool spots"),
    ),
    _category(
        "crvo", "central retinal vein occlusion", "vascular", "CFP UWF FFA OCT",
        ("widespread haemorrhages in all four quadrants",
         "dilated tortuous veins throughout the fundus",
         "a blood-and-thunder fundus",
         "disc swelling with diffuse retinal bleeding"),
    ),
    _category(
        "retinal_artery_occlusion", "retinal artery occlusion", "vascular", "CFP UWF FFA OCT",
        ("a pale swollen ischaemic retina",
         "a cherry-red spot at the fovea",
         "attenuated arterioles with segmented blood columns",
         "an embolus lodged at an arterial bifurcation",
         "retinal whitening along a single arterial territory"),
    ),
    _category(
        "macroaneurysm", "retinal arterial macroaneurysm", "vascular", "CFP FFA UWF",
        ("a round saccular dilation of a retinal arteriole",
         "a focal arterial bulge ringed by lipid",
         "multilevel bleeding around an arteriolar swelling"),
    ),
    _category(
        "tortuous_vessels", "tortuous retinal vessels", "vascular", "CFP UWF",
        ("markedly twisting corkscrew retinal vessels",
         "increased curvature of arterioles and venules",
         "a serpentine vessel course across the posterior pole"),
    ),
    _category(
        "collateral_vessels", "collateral vessels", "vascular", "CFP FFA UWF",
        ("optociliary shunt vessels on the disc",
         "collateral channels bypassing an occluded vein",
         "vessels linking the retinal and choroidal circulations"),
    ),
    _category(
        "vasculitis", "retinal vasculitis", "vascular", "CFP FFA UWF",
        ("sheathing of retinal vessels",
         "white cuffs along inflamed veins",
         "perivascular leakage and staining on angiography"),
    ),
    # --- myopia and choroid ----------------------------------------------------
    _category(
        "pathologic_myopia", "pathologic myopia", "myopia", "CFP OCT UWF",
        ("a posterior staphyloma with a thinned fundus",
         "lacquer cracks and patchy chorioretinal atrophy",
         "a large crescent at the disc of a highly myopic eye",
         "diffuse atrophy from excessive axial elongation"),
        oct=("a steeply curved posterior pole with a very thin choroid",
             "myopic foveoschisis splitting the outer retina",
             "patchy loss of the outer retina over a bowed sclera"),
    ),
    _category(
        "tessellation", "fundus tessellation", "myopia", "CFP UWF",
        ("large choroidal vessels visible through a thin pigment epithelium",
         "a tigroid fundus pattern",
         "a striped orange and dark appearance of the posterior pole"),
    ),
    _category(
        "choroidal_folds", "choroidal folds", "choroid", "CFP OCT FFA",
        ("alternating light and dark parallel lines at the posterior pole",
         "horizontal striae running across the macula",
         "undulation of Bruch's membrane and choroid"),
    ),
    _category(
        "choroidal_rupture", "choroidal rupture", "choroid", "CFP OCT FAF",
        ("a crescent-shaped yellow-white streak concentric to the disc after trauma",
         "a curvilinear break in Bruch's membrane",
         "subretinal blood along a traumatic tear in the choroid"),
    ),
    _category(
        "choroidal_naevus", "choroidal naevus", "tumour", "CFP OCT UWF FAF",
        ("a flat slate-grey pigmented lesion under the retina",
         "a well-circumscribed dark choroidal spot with overlying drusen",
         "a benign-looking pigmented choroidal patch"),
    ),
    _category(
        "intraocular_tumour", "intraocular tumour", "tumour", "CFP OCT UWF",
        ("an elevated dome- or mushroom-shaped mass",
         "orange pigment over a thick choroidal lesion",
         "a large mass with overlying subretinal fluid"),
    ),
    # --- vitreous and media --------------------------------------------------------
    _category(
        "vitreous_haemorrhage", "vitreous haemorrhage", "vitreous", "CFP UWF",
        ("blood in the vitreous cavity obscuring the fundus",
         "a red haze over parts of the image",
         "dense bleeding hiding retinal detail",
         "settled blood with a fluid level inferiorly"),
    ),
    _category(
        "preretinal_haemorrhage", "preretinal haemorrhage", "vitreous", "CFP UWF OCT",
        ("a boat-shaped bleed with a flat upper level",
         "blood trapped between the retina and the posterior hyaloid",
         "a dense dark red pool lying over the retinal vessels"),
    ),
    _category(
        "asteroid_hyalosis", "asteroid hyalosis", "vitreous", "CFP UWF OCT",
        ("many small refractile white bodies in the vitreous",
         "sparkling calcium-lipid particles suspended in the gel",
         "yellow-white specks that move with the eye"),
    ),
    _category(
        "media_haze", "media haze", "media", "CFP UWF",
        ("a uniform haze veiling fundus detail",
         "vitreous cells and flare clouding the disc and vessels",
         "a dim poorly resolved view through cloudy media"),
    ),
    _category(
        "cataract", "cataract", "media", "CFP UWF",
        ("a low-contrast fundus view through an opaque lens",
         "blurred retinal detail across the whole image from lens clouding",
         "a washed-out photograph taken through a cloudy lens",
         "vessels only faintly traceable behind a lens opacity"),
    ),
    # --- retinal detachment and periphery -------------------------------------------
    _category(
        "retinal_detachment", "retinal detachment", "peripheral retina", "CFP OCT UWF",
        ("an elevated grey undulating retina",
         "a retinal tear with a billowing detached retina",
         "loss of choroidal detail beneath a detached retina",
         "mobile folds in a raised retina"),
        oct=("neurosensory retina separated from the RPE far beyond the macula",
             "a detached retina with outer layer corrugation",
             "a large fluid-filled space under a lifted retina"),
    ),
    _category(
        "retinal_traction", "retinal traction", "peripheral retina", "CFP OCT UWF",
        ("fibrous bands pulling on the retina",
         "tent-like elevation of the retina under traction",
         "stretched retinal vessels converging on a contracting band"),
    ),
    _category(
        "peripheral_retinal_degeneration", "peripheral retinal degeneration", "peripheral retina", "CFP UWF",
        ("lattice degeneration in the far periphery",
         "a horseshoe tear in the peripheral retina",
         "thinned peripheral retina criss-crossed by white lines"),
    ),
    _category(
        "retinal_fibrosis", "retinal fibrosis", "peripheral retina", "CFP OCT UWF",
        ("white fibrous tissue on the retinal surface",
         "preretinal fibrotic sheets",
         "fibrous proliferation that has contracted"),
    ),
    # --- dystrophy, inflammation, congenital ------------------------------------------------
    _category(
        "retinitis_pigmentosa", "retinitis pigmentosa", "retinal dystrophy", "CFP OCT FAF UWF",
        ("bone-spicule pigment clumps in the mid-periphery",
         "waxy disc pallor with thread-like arterioles",
         "progressive outer retinal loss with narrowed vessels"),
        oct=("ellipsoid zone lost outside a preserved central island",
             "outer nuclear layer thinning toward the periphery",
             "a shrinking foveal island of intact photoreceptors"),
    ),
    _category(
        "bietti_crystalline_dystrophy", "Bietti crystalline dystrophy", "retinal dystrophy", "CFP OCT FAF",
        ("glistening yellow crystals across the posterior pole",
         "refractile intraretinal crystals with RPE atrophy",
         "crystalline deposits in both eyes with choroidal sclerosis"),
    ),
    _category(
        "chorioretinitis", "chorioretinitis", "inflammation", "CFP OCT UWF FFA",
        ("creamy inflammatory foci in the choroid and retina",
         "a fluffy white lesion beneath overlying vitreous haze",
         "healed pigmented chorioretinal scars",
         "active retinochoroiditis next to an old scar"),
    ),
    _category(
        "retinitis", "retinitis", "inflammation", "CFP UWF OCT",
        ("white necrotising retinal infiltrates",
         "granular white retina with scattered bleeds",
         "an advancing border of retinal whitening"),
    ),
    _category(
        "vkh", "Vogt-Koyanagi-Harada disease", "inflammation", "CFP OCT FFA ICGA UWF",
        ("multiple serous retinal detachments in both eyes",
         "a sunset-glow depigmented fundus",
         "disc hyperaemia with choroidal thickening in uveitis"),
    ),
    _category(
        "coloboma", "coloboma", "congenital", "CFP UWF OCT",
        ("a large white excavated defect below the disc",
         "absent retina and choroid exposing bare sclera",
         "a sharply bordered keyhole-shaped gap in the fundus"),
    ),
    _category(
        "myelinated_nerve_fibres", "myelinated nerve fibres", "congenital", "CFP UWF OCT",
        ("feathery white opaque patches along the nerve fibres",
         "bright white striations hiding vessels next to the disc",
         "glistening white fibre bundles with frayed edges"),
    ),
    # --- treatment traces ---------------------------------------------------------
    _category(
        "laser_scars", "laser scars", "treatment", "CFP UWF FAF",
        ("rows of round pigmented laser burns",
         "regularly spaced chorioretinal scars in the periphery",
         "pale spots with dark pigmented centres from photocoagulation",
         "a grid pattern of small treatment scars"),
    ),
    _category(
        "silicone_oil", "silicone oil", "treatment", "CFP UWF",
        ("a glossy bright reflex from intraocular oil",
         "bubble-like light reflections across the fundus",
         "a vitrectomised eye filled with oil tamponade"),
    ),
)


def _index_categories(categories: tuple[Category, ...]) -> Mapping[str, Category]:
    table: dict[str, Category] = {}
    for category in categories:
        if category.key in table:
            raise ValueError(f"duplicate category key {category.key!r}")
        table[category.key] = category
    return MappingProxyType(table)


# The knowledge dictionary: category key -> Category, in a fixed order.
CATEGORIES: Mapping[str, Category] = _index_categories(_CATEGORY_LIST)

# Extra spellings met in public data sets (RFMiD / FLAIR abbreviations, Kermany
# OCT class names, ICDR wording). Keys and display names are aliases already.
_ALIASES: Mapping[str, tuple[str, ...]] = {
    "normal": ("healthy", "healthy retina", "normal fundus", "no findings", "no abnormality", "no lesion"),
    "ungradable": ("ungradeable", "poor quality", "bad quality", "low quality", "noisy"),
    "no_dr": ("noDR", "no DR", "DR0", "no apparent retinopathy", "no apparent diabetic retinopathy"),
    "mild_npdr": ("mild NPDR", "mild DR", "mildDR", "DR1", "mild diabetic retinopathy"),
    "moderate_npdr": ("moderate NPDR", "moderate DR", "modDR", "DR2", "moderate diabetic retinopathy"),
    "severe_npdr": ("severe NPDR", "severe DR", "sevDR", "DR3", "severe diabetic retinopathy"),
    "pdr": ("PDR", "prolDR", "proliferative DR", "DR4"),
    "diabetic_retinopathy": ("DR", "NPDR", "non proliferative diabetic retinopathy",
                             "no proliferative diabetic retinopathy"),
    "dme": ("DME", "DMO", "diabetic macular edema", "diabetic maculopathy", "CSME",
            "clinically significant macular oedema", "referable DME"),
    "no_dme": ("noDME", "no DME", "no DMO", "no referable diabetic macular oedema", "no referable DME"),
    "microaneurysms": ("MA", "MAs", "microaneurysm", "red small dots"),
    "haemorrhages": ("HE", "haemorrhage", "retinal haemorrhage", "dot blot haemorrhages",
                     "superficial haemorrhages", "deep haemorrhages", "flame haemorrhages"),
    "hard_exudates": ("EX", "hEX", "EDN", "exudates", "exudate", "hard exudate", "exudation"),
    "cotton_wool_spots": ("CWS", "sEX", "SE", "soft exudates", "soft exudate", "cotton wool spot"),
    "neovascularisation": ("NV", "neoV", "NVD", "NVE", "new vessels"),
    "irma": ("IRMA", "intraretinal microvascular abnormality"),
    "venous_beading": ("VB", "beading"),
    "drusen": ("DN", "drusens", "druse"),
    "amd": ("AMD", "ARMD", "macular degeneration", "dry AMD", "early AMD", "intermediate AMD"),
    "cnv": ("CNV", "CNVM", "wet AMD", "nAMD", "neovascular AMD", "neovARMD",
            "neovascular age related macular degeneration", "choroidal neovascular membrane"),
    "geographic_atrophy": ("GA", "geoARMD", "geographic AMD", "atrophic AMD",
                           "geographical age related macular degeneration"),
    "pigment_epithelial_detachment": ("PED", "RPE detachment", "HPED",
                                      "haemorrhagic pigment epithelial detachment"),
    "rpe_changes": ("RPEC", "RPE changes"),
    "macular_hole": ("MHL", "FTMH", "full thickness macular hole"),
    "epiretinal_membrane": ("ERM", "macular pucker"),
    "vitreomacular_traction": ("VMT",),
    "macular_oedema": ("ME", "MO"),
    "cystoid_macular_oedema": ("CME", "CMO"),
    "central_serous_chorioretinopathy": ("CSR", "CSC", "CSCR", "central serous retinopathy",
                                         "acute central serous retinopathy", "acCSR",
                                         "chronic central serous retinopathy", "chCSR"),
    "macular_scar": ("MS", "disciform scar"),
    "parafoveal_telangiectasia": ("PT", "MacTel", "macular telangiectasia"),
    "maculopathy": ("abnormal macula",),
    "yellow_white_flecks": ("YWSF", "yellow white spots flecks", "flecks"),
    "intraretinal_fluid": ("IRF", "intraretinal cysts"),
    "subretinal_fluid": ("SRF",),
    "glaucoma": ("glaucomatous optic neuropathy", "glaucoma suspect", "referable glaucoma", "RG",
                 "optic disc cupping", "ODC", "large optic cup", "LOC", "increased cup disc", "ICD"),
    "peripapillary_atrophy": ("PPA", "parapapillary atrophy"),
    "optic_disc_oedema": ("ODE", "disc oedema", "disc swelling", "disc swelling and elevation", "DSE",
                          "swollen disc"),
    "optic_atrophy": ("OA", "optic disc pallor", "ODP", "pale disc"),
    "aion": ("AION", "NAION", "ischaemic optic neuropathy"),
    "tilted_disc": ("TD",),
    "optic_disc_pit_maculopathy": ("ODPM", "ODM", "optic pit", "optic disc pit"),
    "dragged_disc": ("DD",),
    "congenital_disc_anomaly": ("CDA", "congenital disc abnormality", "morning glory disc"),
    "hypertensive_retinopathy": ("HTR", "mild hypertensive retinopathy", "moderate hypertensive retinopathy",
                                 "severe hypertensive retinopathy", "malignant hypertensive retinopathy",
                                 "sevHR"),
    "brvo": ("BRVO", "branch vein occlusion"),
    "crvo": ("CRVO", "central vein occlusion"),
    "retinal_artery_occlusion": ("RAO", "CRAO", "BRAO", "central retinal artery occlusion",
                                 "branch retinal artery occlusion"),
    "macroaneurysm": ("MCA", "RAM"),
    "tortuous_vessels": ("TV", "vessel tortuosity"),
    "collateral_vessels": ("CL", "ST", "shunt", "collaterals", "optociliary shunt"),
    "vasculitis": ("VS",),
    "pathologic_myopia": ("MYA", "PM", "pathological myopia", "myopic maculopathy", "high myopia", "myopia"),
    "tessellation": ("TSLN", "tessellated fundus", "tigroid fundus"),
    "choroidal_folds": ("CF",),
    "choroidal_rupture": ("PTCR", "post traumatic choroidal rupture"),
    "choroidal_naevus": ("naevus", "nevus", "choroidal nevus"),
    "intraocular_tumour": ("NP", "neoplasm", "tumour", "choroidal melanoma"),
    "vitreous_haemorrhage": ("VH",),
    "preretinal_haemorrhage": ("PRH", "subhyaloid haemorrhage"),
    "asteroid_hyalosis": ("AH",),
    "media_haze": ("vitreous haze",),
    "cataract": ("CAT", "lens opacity"),
    "retinal_detachment": ("RD", "retina detachment", "rhegmatogenous retinal detachment"),
    "retinal_traction": ("RT", "tractional retinal detachment"),
    "peripheral_retinal_degeneration": ("PRDB", "peripheral retinal degeneration and break",
                                        "lattice degeneration", "retinal break", "retinal tear"),
    "retinal_fibrosis": ("fibrosis",),
    "retinitis_pigmentosa": ("RP",),
    "bietti_crystalline_dystrophy": ("BCD", "Bietti"),
    "chorioretinitis": ("CRS", "choroiditis", "retinochoroiditis"),
    "retinitis": ("RS",),
    "vkh": ("VKH", "Vogt-Koyanagi syndrome", "Vogt Koyanagi Harada"),
    "coloboma": ("CB", "colobomas", "chorioretinal coloboma"),
    "myelinated_nerve_fibres": ("MNF", "myelinated RNFL"),
    "laser_scars": ("LS", "laser scar", "PRP scars", "photocoagulation scars"),
    "silicone_oil": ("SO", "silicon oil"),
}

# Abbreviations that public data sets use for two different findings (OCTID's
# "MH" is macular hole, RFMiD's is media haze; RFMiD's "HR" is haemorrhagic
# retinopathy, elsewhere hypertensive). Mapping them silently would mislabel
# one of the two, so they are refused with both candidates named.
_AMBIGUOUS: Mapping[str, tuple[str, ...]] = {
    "MH": ("macular_hole", "media_haze"),
    "HR": ("hypertensive_retinopathy", "haemorrhagic_retinopathy"),
}

# American -> British spellings (and one common misspelling), applied before
# matching so that either spelling finds the same key.
_SPELLINGS: tuple[tuple[str, str], ...] = (
    (r"hemorrh", "haemorrh"),
    (r"(?<!o)edem", "oedem"),
    (r"ischem", "ischaem"),
    (r"ization", "isation"),
    (r"fiber", "fibre"),
    (r"\bdisk", "disc"),
    (r"\bcolor", "colour"),
    (r"\btumor\b", "tumour"),
    (r"\bgray\b", "grey"),
    (r"tesselat", "tessellat"),
)


def _match_form(text: str) -> str:
    """Lower case, British spelling, no spaces/hyphens/underscores/punctuation."""
    text = re.sub(r"[\s_\-/.,;:()'\u2019]+", " ", text.lower()).strip()
    for pattern, replacement in _SPELLINGS:
        text = re.sub(pattern, replacement, text)
    return text.replace(" ", "")


def _build_alias_index() -> Mapping[str, str]:
    index: dict[str, str] = {}
    for key, category in CATEGORIES.items():
        for name in (key, category.display_name, *_ALIASES.get(key, ())):
            form = _match_form(name)
            if index.setdefault(form, key) != key:
                raise ValueError(f"alias {name!r} maps to both {index[form]!r} and {key!r}")
    unknown = set(_ALIASES) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"aliases for unknown categories: {sorted(unknown)}")
    for abbreviation in _AMBIGUOUS:
        if _match_form(abbreviation) in index:
            raise ValueError(f"ambiguous abbreviation {abbreviation!r} is also an alias")
    return MappingProxyType(index)


_ALIAS_INDEX: Mapping[str, str] = _build_alias_index()
_AMBIGUOUS_INDEX: Mapping[str, tuple[str, ...]] = {_match_form(a): keys for a, keys in _AMBIGUOUS.items()}


class UnknownCategoryError(ValueError):
    """A label that maps to no category of the knowledge dictionary."""

    def __init__(self, raw: str, suggestions: tuple[str, ...], reason: str = "unknown") -> None:
        self.raw = raw
        self.suggestions = suggestions
        hint = f"did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else (
            "no close match; see shared_model.prompts.knowledge.CATEGORIES for the valid keys"
        )
        super().__init__(f"{reason} retinal category label {raw!r}: {hint}")


def normalise_label(raw: str) -> str:
    """Map a free-form or public-data-set label to a ``CATEGORIES`` key.

    Matching ignores case, spaces, hyphens, underscores and punctuation, and
    accepts American and British spellings ("Diabetic macular edema" -> "dme",
    "noDR" -> "no_dr", "CNV" -> "cnv"). Raises ``UnknownCategoryError``, naming
    the label and the closest keys, when there is no (unambiguous) match.
    """
    if not isinstance(raw, str):
        raise TypeError(f"label must be a string, got {type(raw).__name__}: {raw!r}")
    form = _match_form(raw)
    if form in _ALIAS_INDEX:
        return _ALIAS_INDEX[form]
    if form in _AMBIGUOUS_INDEX:
        raise UnknownCategoryError(raw, _AMBIGUOUS_INDEX[form], reason="ambiguous")
    close = difflib.get_close_matches(form, _ALIAS_INDEX.keys(), n=8, cutoff=0.6)
    suggestions = tuple(dict.fromkeys(_ALIAS_INDEX[c] for c in close))[:3]
    raise UnknownCategoryError(raw, suggestions)


def get_category(label: str) -> Category:
    """The ``Category`` for a key or any label ``normalise_label`` accepts."""
    return CATEGORIES[normalise_label(label)]
