"""Unit tests of the array-level evaluator (shared_model.eval), FLAIR protocol.

Hand-computed values are derived in comments; sklearn comparisons on larger
inputs live in tests/golden/test_eval_sklearn_golden.py.
"""

import json
import warnings

import numpy as np
import pytest
from rich.console import Console

from shared_model.eval.linear_probe import (
    fit_probe_and_score,
    kshot_probe,
    linear_probe_cv,
    sample_kshot_indices,
)
from shared_model.eval.metrics import as_probabilities, classification_metrics
from shared_model.eval.report import render_table, write_report
from shared_model.eval.retrieval import retrieval_metrics
from shared_model.eval.zero_shot import ensemble_class_embedding, l2_normalize, zero_shot_logits

NAMES3 = ["normal", "dr", "amd"]


def one_hot(pred, n_classes):
    return np.eye(n_classes)[pred]


# ---------------------------------------------------------------- metrics

# 12 examples: 4 of class 0, 2 of class 1, 6 of class 2.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2, 2, 0, 1])


def test_hand_computed_three_class():
    m = classification_metrics(Y_TRUE, one_hot(Y_PRED, 3), NAMES3)
    # recalls: class 0 3/4, class 1 1/2, class 2 4/6 -> ACA = (3/4 + 1/2 + 2/3) / 3 = 23/36
    assert m["aca"] == pytest.approx(23 / 36)
    assert m["per_class_recall"] == pytest.approx([3 / 4, 1 / 2, 4 / 6])
    # accuracy = (3 + 1 + 4) / 12
    assert m["accuracy"] == pytest.approx(8 / 12)
    # F1: class 0 P=3/5 R=3/4 -> 2/3; class 1 P=1/3 R=1/2 -> 2/5; class 2 P=1 R=2/3 -> 4/5
    # macro = (2/3 + 2/5 + 4/5) / 3 = 28/45
    assert m["macro_f1"] == pytest.approx(28 / 45)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [1, 1, 4]]
    assert m["support"] == [4, 2, 6]
    assert m["n"] == 12
    assert m["kappa"] is None  # not ordinal


def test_positive_control_aca_is_not_accuracy():
    # 90 normal, 10 diseased, the classifier always says "normal": accuracy 0.9
    # but ACA 0.5. A metric that returned plain accuracy would fail here.
    y = np.array([0] * 90 + [1] * 10)
    m = classification_metrics(y, one_hot(np.zeros(100, int), 2), ["normal", "disease"])
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["aca"] == pytest.approx(0.5)


def test_absent_class_averages_over_present_classes_without_warning():
    # class 2 absent from y_true but predicted once: it counts as an error for
    # the true class (0), and is left out of the averages.
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, one_hot(pred, 3), NAMES3, ordinal=True)
    # recalls 1/2 and 2/2 -> ACA 3/4 (averaging over three classes would give 1/2)
    assert m["aca"] == pytest.approx(0.75)
    assert m["per_class_recall"] == [0.5, 1.0, None]
    assert m["support"] == [2, 2, 0]
    # F1 class 0: P=1 R=1/2 -> 2/3; class 1: 1 -> macro over present = 5/6
    assert m["macro_f1"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"][0] == [1, 0, 1]


def test_auc_none_when_undefined_and_never_crashes():
    y = np.array([1, 1, 1])
    m = classification_metrics(y, np.array([[0.2, 0.5, 0.3]] * 3), NAMES3, ordinal=True)
    assert m["auc"] is None
    assert m["kappa"] is None  # one grade only: kappa undefined
    assert m["aca"] == 1.0


def test_auc_skips_absent_classes():
    # classes 0 and 1 present, class 2 absent. With the scores below class 0 is
    # ranked perfectly (AUC 1) and class 1 is ranked 3 pairs right of 4 (AUC 3/4).
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.2, 0.5], [0.1, 0.7, 0.2]])
    m = classification_metrics(y, proba, NAMES3)
    # class 1 scores: negatives 0.1, 0.3; positives 0.2, 0.7 -> pairs (0.2>0.1, 0.7>0.1, 0.7>0.3) = 3/4
    assert m["auc"] == pytest.approx((1.0 + 0.75) / 2)


def test_logits_are_softmaxed_for_auc_and_probabilities_kept():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)) * 3
    y = rng.integers(0, 4, 50)
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.allclose(as_probabilities(logits), proba)
    assert np.allclose(as_probabilities(proba), proba)
    names = list("abcd")
    from_logits = classification_metrics(y, logits, names)
    from_proba = classification_metrics(y, proba, names)
    for key in ("aca", "accuracy", "macro_f1", "auc"):
        assert from_logits[key] == pytest.approx(from_proba[key])


def test_kappa_only_when_ordinal_and_uses_grade_distance():
    y = np.array([0, 1, 2, 3, 4])
    m = classification_metrics(y, one_hot(y, 5), list("01234"), ordinal=True)
    assert m["kappa"] == pytest.approx(1.0)
    # Off by one grade hurts less than off by four.
    near = classification_metrics(y, one_hot(np.array([1, 1, 2, 3, 4]), 5), list("01234"), ordinal=True)
    far = classification_metrics(y, one_hot(np.array([4, 1, 2, 3, 4]), 5), list("01234"), ordinal=True)
    assert near["aca"] == far["aca"]
    assert near["kappa"] > far["kappa"]


def test_metrics_are_strict_json():
    m = classification_metrics(np.array([1, 1]), np.array([[0.1, 0.9, 0.0]] * 2), NAMES3, ordinal=True)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


@pytest.mark.parametrize(
    "y, score",
    [
        (np.array([0, 1]), np.zeros((2, 2))),  # 3 names, 2 columns
        (np.array([0, 3]), np.zeros((2, 3))),  # label out of range
        (np.array([0.0, 1.0]), np.zeros((2, 3))),  # float labels
        (np.array([0, 1]), np.array([[0, np.nan, 0], [0, 0, 0]])),
        (np.array([], int), np.zeros((0, 3))),
    ],
)
def test_metrics_reject_bad_input(y, score):
    with pytest.raises(ValueError):
        classification_metrics(y, score, NAMES3)


# -------------------------------------------------------------- zero-shot


def test_zero_shot_argmax_is_nearest_class_by_cosine():
    rng = np.random.default_rng(1)
    classes = rng.normal(size=(5, 16))
    images = rng.normal(size=(40, 16)) * rng.uniform(0.1, 10, size=(40, 1))  # arbitrary norms
    logits = zero_shot_logits(images, classes * 7.0)
    assert logits.shape == (40, 5)
    cos = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ (
        classes / np.linalg.norm(classes, axis=1, keepdims=True)
    ).T
    assert np.array_equal(logits.argmax(1), cos.argmax(1))
    assert np.allclose(logits, 100 * cos)
    assert np.all(np.abs(zero_shot_logits(images, classes, logit_scale=1.0)) <= 1 + 1e-9)


def test_zero_shot_rejects_width_mismatch():
    with pytest.raises(ValueError):
        zero_shot_logits(np.ones((2, 3)), np.ones((2, 4)))


def test_ensemble_class_embedding_is_normalised_mean_direction():
    prompts = np.array([[3.0, 0.0], [0.0, 0.5]])  # norms differ; directions e1, e2
    emb = ensemble_class_embedding(prompts)
    assert emb.shape == (2,)
    assert np.allclose(emb, [np.sqrt(0.5), np.sqrt(0.5)])  # mean of unit vectors, re-normalised
    assert np.allclose(ensemble_class_embedding(prompts[:1]), [1.0, 0.0])
    assert np.allclose(np.linalg.norm(l2_normalize(np.ones((3, 4))), axis=1), 1.0)


# ---------------------------------------------------------- linear probe


def blobs(n_per_class, n_classes=3, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = l2_normalize(rng.normal(size=(n_classes, dim)))
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) / np.sqrt(dim) for c in centers])
    return x, np.repeat(np.arange(n_classes), n_per_class)


def test_linear_probe_separates_blobs():
    x, y = blobs(30)
    result = linear_probe_cv(x, y, class_names=NAMES3, n_splits=5)
    assert result["n_splits"] == 5 and len(result["folds"]) == 5
    assert result["mean"]["aca"] > 0.95
    assert result["n"] == 90
    # every example is tested exactly once across folds
    assert np.sum(result["confusion_matrix"]) == 90
    assert np.sum(result["confusion_matrix"], axis=1).tolist() == [30, 30, 30]
    json.dumps(result, allow_nan=False)


def test_linear_probe_on_random_labels_is_at_chance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(240, 16))
    y = rng.integers(0, 4, 240)
    result = linear_probe_cv(x, y, class_names=list("abcd"))
    assert abs(result["mean"]["aca"] - 0.25) < 0.1


def test_linear_probe_inner_cv_chooses_c_from_grid():
    x, y = blobs(12)
    result = linear_probe_cv(x, y, class_names=NAMES3, n_splits=3, C=None, C_grid=(0.1, 1.0))
    assert {fold["C"] for fold in result["folds"]} <= {0.1, 1.0}
    assert result["mean"]["aca"] > 0.95


def test_linear_probe_reduces_folds_for_small_classes():
    x, y = blobs(10)
    keep = np.r_[0:10, 10:20, 20:23]  # class 2 has 3 examples
    result = linear_probe_cv(x[keep], y[keep], class_names=NAMES3, n_splits=5)
    assert result["n_splits"] == 3 and result["n_splits_requested"] == 5


def test_linear_probe_rejects_singleton_class():
    x, y = blobs(10)
    keep = np.r_[0:20, 20]  # class 2 ("amd") has 1 example
    with pytest.raises(ValueError, match="amd"):
        linear_probe_cv(x[keep], y[keep], class_names=NAMES3)


def test_fit_probe_gives_unseen_class_zero_probability():
    x, y = blobs(10)
    train = y < 2  # class 2 never seen in training
    m = fit_probe_and_score(x[train], y[train], x, y, class_names=NAMES3)
    assert m["per_class_recall"][2] == 0.0
    assert m["confusion_matrix"][2][2] == 0
    assert m["C"] == pytest.approx(0.316)


def test_sample_kshot_indices_takes_exactly_k_per_class():
    y = np.array([0] * 10 + [1] * 4 + [3] * 7)
    idx = sample_kshot_indices(y, 3, np.random.default_rng(0))
    assert len(set(idx.tolist())) == len(idx)
    assert np.bincount(y[idx]).tolist() == [3, 3, 0, 3]
    with pytest.raises(ValueError):
        sample_kshot_indices(y, 5, np.random.default_rng(0))


def test_kshot_probe_trials_are_seeded_and_k_per_class():
    x, y = blobs(20)
    result = kshot_probe(x, y, x, y, 2, 4, seed=3, class_names=NAMES3)
    assert result["n_train"] == 6 and result["k"] == 2 and len(result["trials"]) == 4
    assert result["mean"]["aca"] > 0.9
    again = kshot_probe(x, y, x, y, 2, 4, seed=3, class_names=NAMES3)
    assert again == result
    with pytest.raises(ValueError, match="k=21"):
        kshot_probe(x, y, x, y, 21, 1, class_names=NAMES3)


# -------------------------------------------------------------- retrieval


def test_retrieval_identity_is_perfect():
    r = retrieval_metrics(np.eye(6), np.arange(6))
    for direction in ("image_to_text", "text_to_image"):
        assert r[direction]["recall"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
        assert r[direction]["mean_rank"] == 1.0


def test_retrieval_known_ranks():
    # Image i's true text is i, but its similarity row places that text at
    # rank i + 1 among 4 texts: ranks 1, 2, 3, 4.
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],
            [0.8, 0.5, 0.1, 0.0],
            [0.7, 0.6, 0.3, 0.0],
            [0.9, 0.8, 0.7, 0.1],
        ]
    )
    r = retrieval_metrics(sim, np.arange(4), ks=(1, 2, 5))
    i2t = r["image_to_text"]
    assert i2t["recall"] == {"R@1": 0.25, "R@2": 0.5, "R@5": 1.0}
    assert i2t["mean_rank"] == 2.5 and i2t["median_rank"] == 2.5
    # Text j's column: text 0 -> image 0 has 0.9, tied with image 3 -> rank 2
    # (ties count against); text 1: 0.5 below 0.6, 0.8 -> 3; text 2: 0.3 below 0.7 -> 2;
    # text 3: 0.1 below 0.3 -> 2.
    t2i = r["text_to_image"]
    assert t2i["mean_rank"] == pytest.approx((2 + 3 + 2 + 2) / 4)
    assert t2i["recall"]["R@1"] == 0.0


def test_retrieval_many_to_many_pairing():
    # Images 0 and 1 share one caption (text 0); image 2 has two reports (1, 2); text 3 is a distractor.
    sim = np.array(
        [
            [0.9, 0.0, 0.0, 0.5],
            [0.2, 0.0, 0.0, 0.5],
            [0.0, 0.1, 0.8, 0.9],
        ]
    )
    r = retrieval_metrics(sim, [{0}, {0}, {1, 2}], ks=(1,))
    # image 1: distractor 0.5 beats its 0.2 -> rank 2; image 2: best report 0.8 < 0.9 -> rank 2
    assert r["image_to_text"]["recall"]["R@1"] == pytest.approx(1 / 3)
    # text 0 found at image 0 (other correct image 1 not counted against); texts 1, 2 -> image 2 first
    assert r["text_to_image"]["recall"]["R@1"] == 1.0
    assert r["text_to_image"]["n_queries"] == 3  # the distractor text is no query


def test_retrieval_collapsed_model_gets_worst_rank():
    r = retrieval_metrics(np.ones((5, 5)), np.arange(5))
    assert r["image_to_text"]["recall"]["R@1"] == 0.0
    assert r["image_to_text"]["mean_rank"] == 5.0


def test_retrieval_rejects_bad_pairing():
    with pytest.raises(ValueError):
        retrieval_metrics(np.eye(3), [{0}, {1}, {3}])
    with pytest.raises(ValueError):
        retrieval_metrics(np.eye(3), np.arange(2))


# ----------------------------------------------------------------- report


def test_report_writes_files_and_json_round_trips(tmp_path):
    x, y = blobs(10)
    logits = zero_shot_logits(x, l2_normalize(np.stack([x[y == c].mean(0) for c in range(3)])))
    results = {
        "zero_shot": {"toy": classification_metrics(y, logits, NAMES3, ordinal=True)},
        "linear_probe": {"toy": linear_probe_cv(x, y, class_names=NAMES3, n_splits=2)},
        "kshot": {"toy/k=1": kshot_probe(x, y, x, y, 1, 2, class_names=NAMES3)},
        "retrieval": {"pairs": retrieval_metrics(np.eye(4), np.arange(4))},
        "meta": {"round": 3},
    }
    written = write_report(results, tmp_path / "out", "Round 3")
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "confusion_linear_probe_toy.png",
        "confusion_zero_shot_toy.png",
        "metrics.json",
        "summary.md",
    ]  # and no temp files left behind
    assert sorted(p.name for p in written) == names
    assert json.loads((out / "metrics.json").read_text()) == results
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Round 3")
    assert "| task | dataset | n | ACA | acc | macro-F1 | AUC | kappa |" in summary
    assert "| zero-shot | toy | 30 |" in summary
    assert "linear probe (2-fold)" in summary and "1-shot ×2" in summary and " ± " in summary
    assert "| pairs | image→text | 4 | 1.000 | 1.000 | 1.000 | 1.0 | 1.0 |" in summary

    console = Console(record=True, width=80)  # the terminal it must fit, no cell cut
    console.print(render_table(results, title="Round 3"))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for cell in ("zero-shot", "probe 2-fold", "1-shot ×2", "image→text", "toy"):
        assert cell in text


def test_report_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_report({"meta": {"x": float("nan")}}, tmp_path, "t")
    assert list(tmp_path.iterdir()) == []
