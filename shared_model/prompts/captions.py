"""Training captions and zero-shot prompt ensembles built from the knowledge dictionary.

Training captions follow VisionCLIP (Wei et al., "VisionCLIP: An Med-AIGC based
Ethical Language-Image Foundation Model for Generalizable Retina Image
Analysis", 2024) and FLAIR (Silva-Rodriguez et al., arXiv:2308.07898): a
labelled image gets a sentence that names each finding by its display name or
by one of its expert descriptors, chosen at random each time, so the text
tower learns what a finding looks like rather than a fixed class string.

Zero-shot prompts follow FLAIR's protocol: each class is represented by an
ensemble of prompts (its name and every descriptor in fixed templates); the
model code averages their normalised text embeddings into one class embedding.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from shared_model.prompts.knowledge import Category, get_category

# Imaging modality codes used in site manifests -> readable phrase (no article).
MODALITY_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "CFP": "colour fundus photograph",
        "OCT": "optical coherence tomography scan",
        "FFA": "fundus fluorescein angiogram",
        "FAF": "fundus autofluorescence image",
        "ICGA": "indocyanine green angiogram",
        "UWF": "ultra-widefield fundus image",
        "IR": "infrared reflectance image",
        "OCTA": "optical coherence tomography angiogram",
    }
)
# The valid modality codes; the manifest validator checks against this set.
KNOWN_MODALITIES: frozenset[str] = frozenset(MODALITY_NAMES)

# Caption sentence templates: {a_m} = modality with article, {m} = modality,
# {f} = the joined findings.
_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{a_m} showing {f}.",
    "{a_m} of an eye with {f}.",
    "{m} findings: {f}.",
    "{f} seen on {a_m}.",
    "this {m} shows {f}.",
    "{a_m} demonstrating {f}.",
)

# Prompt templates for zero-shot: the class name in three, each descriptor in one.
_NAME_PROMPTS: tuple[str, ...] = ("{x}", "{a_m} showing {x}.", "{a_m} with signs of {x}.")
_DESCRIPTOR_PROMPT = "{a_m} showing {x}."

Rng = random.Random | np.random.Generator


def _modality_phrases(modality: str) -> dict[str, str]:
    if modality not in KNOWN_MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(KNOWN_MODALITIES)}")
    phrase = MODALITY_NAMES[modality]
    article = "an" if phrase[0] in "aeiou" else "a"
    return {"m": phrase, "a_m": f"{article} {phrase}"}


def _sentence(template: str, **fields: str) -> str:
    text = template.format(**fields)
    return text[0].upper() + text[1:]


def _randbelow(rng: Rng, n: int) -> int:
    """Uniform integer in [0, n) from either kind of generator (the caller's stream)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    raise TypeError(f"rng must be random.Random or numpy.random.Generator, got {type(rng).__name__}")


def _finding(category: Category, modality: str, rng: Rng) -> str:
    """One label as text: a descriptor, the display name, or both."""
    descriptors = category.descriptors_for(modality)
    descriptor = descriptors[_randbelow(rng, len(descriptors))]
    form = _randbelow(rng, 3)
    if form == 0:
        return descriptor
    if form == 1:
        return category.display_name
    return f"{category.display_name} ({descriptor})"


def _join(findings: list[str]) -> str:
    if len(findings) == 1:
        return findings[0]
    return ", ".join(findings[:-1]) + " and " + findings[-1]


def build_caption(
    labels: Sequence[str], rng: random.Random | np.random.Generator, modality: str = "CFP"
) -> str:
    """A training caption for an image with ``labels`` (keys or any alias).

    Each label becomes a random descriptor, its display name, or "name
    (descriptor)"; the findings, in the given order and without repeats, are
    joined into one random sentence template that names the modality. The same
    generator state gives the same caption.
    """
    if isinstance(labels, str):
        raise TypeError("labels must be a sequence of labels, not a single string")
    keys = list(dict.fromkeys(get_category(label).key for label in labels))
    if not keys:
        raise ValueError("build_caption needs at least one label")
    phrases = _modality_phrases(modality)
    findings = [_finding(get_category(key), modality, rng) for key in keys]
    template = _CAPTION_TEMPLATES[_randbelow(rng, len(_CAPTION_TEMPLATES))]
    return _sentence(template, f=_join(findings), **phrases)


def prompt_ensemble(category: str, modality: str = "CFP") -> list[str]:
    """Zero-shot prompts for one class (FLAIR-style prompt ensemble).

    Returns the display name in three fixed templates followed by every
    descriptor for ``modality`` in one template: at most 11 prompts, always in
    the same order. The caller embeds and averages them into the class
    embedding.
    """
    entry = get_category(category)
    phrases = _modality_phrases(modality)
    prompts = [_sentence(t, x=entry.display_name, **phrases) for t in _NAME_PROMPTS]
    prompts += [_sentence(_DESCRIPTOR_PROMPT, x=d, **phrases) for d in entry.descriptors_for(modality)]
    return prompts
