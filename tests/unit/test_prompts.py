"""Knowledge dictionary, label normalisation, captions and prompt ensembles."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from shared_model.prompts import (
    CATEGORIES,
    DR_GRADES,
    GRADING_TASKS,
    KNOWN_MODALITIES,
    MODALITY_NAMES,
    UnknownCategoryError,
    build_caption,
    get_category,
    normalise_label,
    prompt_ensemble,
)

# Keys the phantom generator and the real-data adapters rely on.
REQUIRED_KEYS = (
    "normal", "no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr", "dme", "glaucoma", "amd",
    "drusen", "cnv", "geographic_atrophy", "pathologic_myopia", "tessellation", "peripapillary_atrophy",
    "cataract", "hypertensive_retinopathy", "macular_hole", "epiretinal_membrane", "brvo", "crvo",
    "retinal_artery_occlusion", "retinal_detachment", "retinitis_pigmentosa", "papilledema",
    "optic_atrophy", "laser_scars", "microaneurysms", "haemorrhages", "hard_exudates",
    "cotton_wool_spots", "neovascularisation", "vitreous_haemorrhage", "central_serous_chorioretinopathy",
    "chorioretinitis", "coloboma", "myelinated_nerve_fibres", "asteroid_hyalosis", "macular_scar",
    "intraretinal_fluid", "subretinal_fluid", "tilted_disc", "media_haze",
)


def _all_descriptors(category):
    return (*category.descriptors, *(d for _, ds in category.modality_descriptors for d in ds))


def _real_label_files() -> list[Path]:
    # shared/ sits next to the checkout here, inside it on the device machine.
    root = Path(__file__).resolve().parents[2]
    for base in (root / "shared", root.parent / "shared"):
        files = sorted((base / "data" / "real").glob("*/labels.csv"))
        if files:
            return files
    return []


# --- the dictionary -------------------------------------------------------------------


def test_dictionary_size_and_required_keys():
    assert len(CATEGORIES) >= 45
    missing = [k for k in REQUIRED_KEYS if k not in CATEGORIES]
    assert not missing


@pytest.mark.parametrize("key", list(CATEGORIES))
def test_every_category_is_complete(key):
    category = CATEGORIES[key]
    assert category.key == key
    assert category.display_name.strip()
    assert len(set(category.descriptors)) == len(category.descriptors) >= 3
    assert category.modalities and category.modalities <= KNOWN_MODALITIES
    for modality, descriptors in category.modality_descriptors:
        assert modality in category.modalities
        assert len(set(descriptors)) == len(descriptors) >= 3


def test_no_descriptor_is_shared_or_names_another_category():
    # Zero-shot classes must stay distinguishable: no shared prompt text.
    owner: dict[str, str] = {}
    for key, category in CATEGORIES.items():
        for descriptor in _all_descriptors(category):
            text = descriptor.lower()
            assert text not in owner, f"{descriptor!r} used by {owner.get(text)} and {key}"
            owner[text] = key
    names = {c.display_name.lower(): k for k, c in CATEGORIES.items()}
    clashes = {d: (owner[d], names[d]) for d in owner if d in names and names[d] != owner[d]}
    assert not clashes


def test_dr_grades_are_ordinal_and_consistent():
    assert DR_GRADES == ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")
    assert GRADING_TASKS["diabetic_retinopathy"] == DR_GRADES
    for task, keys in GRADING_TASKS.items():
        for level, key in enumerate(keys):
            grade = CATEGORIES[key].grade
            assert grade is not None and (grade.task, grade.level) == (task, level)


def test_normal_and_no_dr_are_distinct():
    assert CATEGORIES["normal"].grade is None
    assert CATEGORIES["no_dr"].grade.level == 0
    assert normalise_label("NORMAL") == "normal"
    assert normalise_label("noDR") == "no_dr"


# --- label normalisation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("CNV", "cnv"),
        ("DRUSEN", "drusen"),
        ("NORMAL", "normal"),
        ("DME", "dme"),
        ("severe non proliferative diabetic retinopathy", "severe_npdr"),
        ("Severe Non-Proliferative Diabetic Retinopathy", "severe_npdr"),
        ("severe_nonproliferative_diabetic_retinopathy", "severe_npdr"),
        ("Diabetic macular edema", "dme"),
        ("diabetic macular oedema", "dme"),
        ("macular hole", "macular_hole"),
        ("Macular-Hole", "macular_hole"),
        ("noDR", "no_dr"),
        ("no diabetic retinopathy", "no_dr"),
        ("age related macular degeneration", "amd"),
        ("Age-related macular degeneration", "amd"),
        ("ARMD", "amd"),
        ("wet AMD", "cnv"),
        ("retinal hemorrhages", "haemorrhages"),
        ("neovascularization", "neovascularisation"),
        ("myelinated nerve fibers", "myelinated_nerve_fibres"),
        ("papilledema", "papilledema"),
        ("Papilloedema", "papilledema"),
        ("tilted disk", "tilted_disc"),
        ("CSR", "central_serous_chorioretinopathy"),
        ("TSLN", "tessellation"),
        ("MHL", "macular_hole"),
        ("  Glaucoma ", "glaucoma"),
    ],
)
def test_normalise_label(raw, key):
    assert normalise_label(raw) == key


def test_every_key_and_display_name_normalises_to_itself():
    for key, category in CATEGORIES.items():
        assert normalise_label(key) == key
        assert normalise_label(category.display_name) == key
        assert normalise_label(category.display_name.upper()) == key


def test_real_data_labels_normalise():
    files = _real_label_files()
    if not files:
        pytest.skip("shared/data/real not available")
    for path in files:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                assert normalise_label(row["label"]) in CATEGORIES, (path, row["label"])


def test_unknown_label_names_raw_and_suggests():
    with pytest.raises(UnknownCategoryError) as info:
        normalise_label("glaucomma suspect")
    message = str(info.value)
    assert "glaucomma suspect" in message
    assert "glaucoma" in info.value.suggestions and "'glaucoma'" in message
    assert isinstance(info.value, ValueError)


def test_ambiguous_abbreviation_is_refused_with_both_candidates():
    with pytest.raises(UnknownCategoryError) as info:
        normalise_label("MH")
    assert set(info.value.suggestions) == {"macular_hole", "media_haze"}


def test_unmatched_label_without_suggestion():
    with pytest.raises(UnknownCategoryError, match="qqqq") as info:
        normalise_label("qqqq")
    assert info.value.suggestions == ()


# --- captions -------------------------------------------------------------------------------


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng])
def test_caption_deterministic_for_a_seed(make_rng):
    labels = ["moderate_npdr", "dme"]
    assert build_caption(labels, make_rng(7)) == build_caption(labels, make_rng(7))


def test_captions_vary_across_seeds():
    captions = {build_caption(["moderate_npdr"], random.Random(seed)) for seed in range(50)}
    assert len(captions) >= 10


def test_caption_names_the_modality():
    for modality, phrase in MODALITY_NAMES.items():
        assert phrase in build_caption(["normal"], random.Random(0), modality)


def test_multi_label_caption_mentions_every_label():
    rng = np.random.default_rng(3)
    labels = ["drusen", "geographic_atrophy", "laser_scars", "Diabetic macular edema"]
    for modality in ("CFP", "OCT"):
        for _ in range(30):
            caption = build_caption(labels, rng, modality).lower()
            for label in labels:
                category = get_category(label)
                texts = (category.display_name, *category.descriptors_for(modality))
                assert any(t.lower() in caption for t in texts), (label, caption)


def test_oct_caption_uses_oct_descriptors():
    oct_descriptors = get_category("cnv").descriptors_for("OCT")
    assert oct_descriptors != get_category("cnv").descriptors
    captions = [build_caption(["cnv"], random.Random(s), "OCT") for s in range(40)]
    assert any(any(d in c for d in oct_descriptors) for c in captions)
    assert not any(d in c for c in captions for d in get_category("cnv").descriptors)


def test_caption_rejects_bad_input():
    rng = random.Random(0)
    with pytest.raises(TypeError):
        build_caption("cnv", rng)
    with pytest.raises(ValueError):
        build_caption([], rng)
    with pytest.raises(ValueError, match="modality"):
        build_caption(["cnv"], rng, "MRI")
    with pytest.raises(UnknownCategoryError):
        build_caption(["not a finding"], rng)


# --- zero-shot prompt ensembles ---------------------------------------------------------


@pytest.mark.parametrize("key", list(CATEGORIES))
def test_prompt_ensemble_is_modest_and_includes_name(key):
    for modality in ("CFP", "OCT"):
        prompts = prompt_ensemble(key, modality)
        assert 0 < len(prompts) <= 16
        assert len(set(prompts)) == len(prompts)
        assert any(CATEGORIES[key].display_name.lower() in p.lower() for p in prompts)


def test_prompt_ensemble_is_the_name_then_every_expert_descriptor_of_the_modality():
    """Three name prompts, then one prompt per knowledge-base descriptor of the modality, in the
    dictionary's order (OCT has its own descriptors); an alias gives the same ensemble, an
    unknown class or modality is refused."""
    descriptors = {m: CATEGORIES["glaucoma"].descriptors_for(m) for m in ("CFP", "OCT")}
    assert "an enlarged optic cup with a high cup-to-disc ratio" in descriptors["CFP"]
    assert set(descriptors["CFP"]).isdisjoint(descriptors["OCT"])
    for modality, phrase in (("CFP", "A colour fundus photograph"), ("OCT", "An optical coherence tomography scan")):
        assert prompt_ensemble("glaucoma", modality) == [
            "Glaucoma", f"{phrase} showing glaucoma.", f"{phrase} with signs of glaucoma.",
            *(f"{phrase} showing {d}." for d in descriptors[modality])]
    assert prompt_ensemble("CNV", "OCT") == prompt_ensemble("choroidal neovascularisation", "OCT")
    with pytest.raises(UnknownCategoryError, match="glaucomma"):
        prompt_ensemble("glaucomma")
    with pytest.raises(ValueError, match="unknown modality 'MRI'"):
        prompt_ensemble("glaucoma", "MRI")


def test_prompt_ensembles_differ_between_classes():
    ensembles = {key: frozenset(prompt_ensemble(key)) for key in CATEGORIES}
    for a in CATEGORIES:
        for b in CATEGORIES:
            if a < b:
                assert not ensembles[a] & ensembles[b], (a, b)
