"""Retinal text side: expert-knowledge dictionary, training captions, zero-shot prompts.

``knowledge`` holds the category dictionary (FLAIR-style expert descriptors,
Silva-Rodriguez et al., arXiv:2308.07898) and label normalisation for public
data sets; ``captions`` turns labels into training captions (VisionCLIP / FLAIR)
and categories into zero-shot prompt ensembles.
"""

from shared_model.prompts.captions import KNOWN_MODALITIES, MODALITY_NAMES, build_caption, prompt_ensemble
from shared_model.prompts.knowledge import (
    CATEGORIES,
    DR_GRADES,
    GRADING_TASKS,
    Category,
    Grade,
    UnknownCategoryError,
    get_category,
    normalise_label,
)

__all__ = [
    "CATEGORIES",
    "DR_GRADES",
    "GRADING_TASKS",
    "KNOWN_MODALITIES",
    "MODALITY_NAMES",
    "Category",
    "Grade",
    "UnknownCategoryError",
    "build_caption",
    "get_category",
    "normalise_label",
    "prompt_ensemble",
]
