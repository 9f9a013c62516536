"""Classification metrics of the FLAIR protocol (arXiv 2308.07898, ``flair/utils/metrics.py``).

ACA, the average class accuracy (= balanced accuracy = mean per-class recall), is
the headline; accuracy, macro-F1, one-vs-rest macro AUC and, for ordinal grading
tasks, quadratic-weighted Cohen's kappa come with it.

Classes absent from ``y_true`` are handled as FLAIR does: every per-class average
(ACA, macro-F1, AUC) runs over the classes present in ``y_true`` only, so a test
split without, say, proliferative DR is neither rewarded nor punished for that
class. Predictions of an absent class still count as errors for the true class.
"""

import warnings
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from scipy.special import softmax
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

# The scalar entries of ClassificationMetrics, in the order reports show them.
SCALAR_METRICS = ("aca", "accuracy", "macro_f1", "auc", "kappa")


class ClassificationMetrics(TypedDict):
    """Result of :func:`classification_metrics`; plain JSON types only."""

    n: int  # number of evaluated examples
    class_names: list[str]
    support: list[int]  # examples per class in y_true, aligned with class_names
    aca: float  # balanced accuracy over classes present in y_true (headline)
    accuracy: float
    macro_f1: float  # over classes present in y_true
    auc: float | None  # one-vs-rest macro AUC; None when no class allows it
    kappa: float | None  # quadratic-weighted; None unless ordinal and defined
    confusion_matrix: list[list[int]]  # C x C, rows = true class, cols = predicted
    per_class_recall: list[float | None]  # None for classes absent from y_true


def as_probabilities(y_score: np.ndarray) -> np.ndarray:
    """Return row-stochastic scores: ``y_score`` itself if it already is, else its softmax.

    Rows that are non-negative and sum to 1 are taken as probabilities; anything
    else is taken as logits. AUC needs this because softmax changes how one
    class's scores rank across examples.
    """
    y_score = np.asarray(y_score, dtype=np.float64)
    if np.all(y_score >= 0) and np.allclose(y_score.sum(axis=1), 1.0, atol=1e-5):
        return y_score
    return softmax(y_score, axis=1)


def _one_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    # FLAIR: mean over present classes of roc_auc_score(y_true == c, proba[:, c]).
    # A class is skipped when its binary labels take one value (it is absent, or
    # it is the only class present), where ROC AUC is undefined.
    aucs = [
        roc_auc_score(y_true == c, proba[:, c])
        for c in np.unique(y_true)
        if 0 < np.sum(y_true == c) < len(y_true)
    ]
    return float(np.mean(aucs)) if aucs else None


def classification_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    class_names: Sequence[str],
    ordinal: bool = False,
) -> ClassificationMetrics:
    """FLAIR classification metrics from integer labels and per-class scores.

    Args:
        y_true: (N,) integer labels in ``[0, C)``.
        y_score: (N, C) probabilities or logits (see :func:`as_probabilities`);
            the prediction is the row argmax.
        class_names: C names; the score columns follow this order.
        ordinal: grading task (e.g. DR grade): also report quadratic-weighted
            Cohen's kappa, with class index as the grade.

    ACA is ``sklearn.metrics.balanced_accuracy_score``, which averages recall
    over the classes present in ``y_true``; macro-F1 and AUC use the same
    classes (see the module docstring).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    n_classes = len(class_names)
    if y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array, got shape {y_true.shape}")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if y_score.shape != (len(y_true), n_classes):
        raise ValueError(
            f"y_score has shape {y_score.shape}, expected ({len(y_true)}, {n_classes}) "
            "= (len(y_true), len(class_names))"
        )
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y_true.min()}..{y_true.max()}")
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score contains NaN or infinite values")

    y_pred = y_score.argmax(axis=1)
    present = np.unique(y_true)
    all_labels = np.arange(n_classes)

    with warnings.catch_warnings():
        # Both cases are expected here: predicting a class absent from y_true
        # (sklearn then averages over the classes present, which is the
        # protocol), and a split where truth and predictions are one class.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        aca = balanced_accuracy_score(y_true, y_pred)

    cm = confusion_matrix(y_true, y_pred, labels=all_labels)
    support = cm.sum(axis=1)
    recall = [float(cm[c, c] / support[c]) if support[c] else None for c in all_labels]

    kappa = None
    if ordinal:
        # labels=all classes so that the quadratic weight of an error is the
        # grade distance even when some grades are missing from this split.
        with warnings.catch_warnings():
            # Undefined (one grade only) is reported as None instead.
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            value = cohen_kappa_score(y_true, y_pred, labels=all_labels, weights="quadratic")
        kappa = None if np.isnan(value) else float(value)

    return ClassificationMetrics(
        n=len(y_true),
        class_names=[str(name) for name in class_names],
        support=support.tolist(),
        aca=float(aca),
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        auc=_one_vs_rest_auc(y_true, as_probabilities(y_score)),
        kappa=kappa,
        confusion_matrix=cm.tolist(),
        per_class_recall=recall,
    )
