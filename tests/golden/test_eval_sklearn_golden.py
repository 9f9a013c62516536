"""Golden tests: shared_model.eval against independent references.

References are computed here, separately from the evaluator: scikit-learn's
metric functions called directly, FLAIR's own formulas (flair/utils/metrics.py,
confusion-matrix based ACA), a plain sklearn Normalizer + LogisticRegression
pipeline for the probe, and argsort ranks (open_clip style) for retrieval.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from shared_model.eval.linear_probe import fit_probe_and_score
from shared_model.eval.metrics import classification_metrics
from shared_model.eval.retrieval import retrieval_metrics


def noisy_scores(n, n_classes, seed, skill=1.5):
    """Labels and softmax scores of a classifier with some skill, fixed by seed."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = skill * np.eye(n_classes)[y] + rng.normal(size=(n, n_classes))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba


@pytest.mark.parametrize("n_classes, seed", [(2, 0), (3, 1), (5, 2), (5, 3)])
def test_metrics_equal_sklearn(n_classes, seed):
    y, proba = noisy_scores(300, n_classes, seed)
    pred = proba.argmax(1)
    names = [f"c{i}" for i in range(n_classes)]
    m = classification_metrics(y, proba, names, ordinal=True)

    assert m["aca"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    if n_classes == 2:
        assert m["auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    else:
        assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def flair_reference(refs, preds):
    """FLAIR's classification_metrics (flair/utils/metrics.py), unrounded."""
    pred = preds.argmax(-1)
    cm = confusion_matrix(refs, pred, labels=np.unique(refs))  # FLAIR: classes seen in refs
    aca = np.mean(np.diag(cm) / cm.sum(-1))
    f1 = np.mean([f1_score(refs == i, pred == i) for i in np.unique(refs)])
    auc = np.mean([roc_auc_score(refs == i, preds[:, i]) for i in np.unique(refs)])
    return aca, f1, auc


def test_absent_classes_match_flair():
    # 5 classes declared, classes 1 and 3 absent from the labels. Their score
    # columns are zeroed so they are never predicted: FLAIR's confusion-matrix
    # ACA (NaN when an absent class is predicted) is then defined and must match.
    y, proba = noisy_scores(200, 5, seed=4, skill=2.5)
    keep = (y != 1) & (y != 3)
    y, proba = y[keep], proba[keep]
    proba[:, [1, 3]] = 0.0
    proba /= proba.sum(1, keepdims=True)
    m = classification_metrics(y, proba, list("abcde"))
    aca, f1, auc = flair_reference(y, proba)
    assert m["aca"] == pytest.approx(aca)
    assert m["macro_f1"] == pytest.approx(f1)
    assert m["auc"] == pytest.approx(auc)
    assert m["per_class_recall"][1] is None and m["per_class_recall"][3] is None


def test_probe_equals_plain_sklearn_pipeline():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 8)) + np.repeat(np.eye(3, 8) * 2, 40, axis=0)
    y = np.repeat(np.arange(3), 40)
    train = rng.random(120) < 0.6
    reference = make_pipeline(
        Normalizer(), LogisticRegression(C=0.316, class_weight="balanced", max_iter=1000)
    ).fit(x[train], y[train])
    expected = classification_metrics(y[~train], reference.predict_proba(x[~train]), list("abc"))
    got = fit_probe_and_score(x[train], y[train], x[~train], y[~train], class_names=list("abc"))
    for key in ("aca", "accuracy", "macro_f1", "auc"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6)
    assert got["confusion_matrix"] == expected["confusion_matrix"]


def test_retrieval_equals_argsort_ranks():
    rng = np.random.default_rng(6)
    n = 50
    sim = rng.normal(size=(n, n)) + 1.5 * np.eye(n)  # continuous: no ties
    r = retrieval_metrics(sim, np.arange(n))
    for direction, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        order = np.argsort(-s, axis=1)
        ranks = 1 + np.argmax(order == np.arange(n)[:, None], axis=1)
        for k in (1, 5, 10):
            assert r[direction]["recall"][f"R@{k}"] == pytest.approx(np.mean(ranks <= k))
        assert r[direction]["mean_rank"] == pytest.approx(ranks.mean())
        assert r[direction]["median_rank"] == pytest.approx(np.median(ranks))
