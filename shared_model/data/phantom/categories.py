"""Category keys the phantom generator can draw, and their clinical names.

The keys match the project's expert knowledge dictionary
(``shared_model.prompts.knowledge``) so phantom labels feed the zero-shot
evaluator without a mapping table.
"""

CATEGORIES: tuple[str, ...] = (
    "normal",
    "mild_npdr",
    "moderate_npdr",
    "severe_npdr",
    "pdr",
    "dme",
    "glaucoma",
    "amd",
    "pathologic_myopia",
    "cataract",
    "hypertensive_retinopathy",
)

# Diabetic retinopathy grades the phantom draws (no "no_dr": a phantom eye without DR is "normal"),
# ordered by severity: lesion counts grow monotonically along this tuple.
DR_RETINOPATHY_GRADES: tuple[str, ...] = ("mild_npdr", "moderate_npdr", "severe_npdr", "pdr")

# DR grades that may carry diabetic macular oedema as a second label.
DME_COMORBID_GRADES: tuple[str, ...] = ("moderate_npdr", "severe_npdr", "pdr")

CLINICAL_NAMES: dict[str, str] = {
    "normal": "normal fundus",
    "mild_npdr": "mild non-proliferative diabetic retinopathy",
    "moderate_npdr": "moderate non-proliferative diabetic retinopathy",
    "severe_npdr": "severe non-proliferative diabetic retinopathy",
    "pdr": "proliferative diabetic retinopathy",
    "dme": "diabetic macular oedema",
    "glaucoma": "glaucomatous optic neuropathy",
    "amd": "age-related macular degeneration",
    "pathologic_myopia": "pathologic myopia",
    "cataract": "cataract",
    "hypertensive_retinopathy": "hypertensive retinopathy",
}


EYES: tuple[str, ...] = ("OD", "OS")  # right eye, left eye


def check_eye(eye: str) -> None:
    """Raise ``ValueError`` unless ``eye`` is ``"OD"`` or ``"OS"``."""
    if eye not in EYES:
        raise ValueError(f"eye must be one of {EYES}, got {eye!r}")


def check_categories(labels: tuple[str, ...] | list[str]) -> None:
    """Raise ``ValueError`` naming any label that is not a phantom category key."""
    unknown = [label for label in labels if label not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown phantom categories {unknown}; known: {', '.join(CATEGORIES)}")
