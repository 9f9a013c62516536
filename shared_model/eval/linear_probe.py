"""Linear probes on frozen image embeddings (FLAIR arXiv 2308.07898, ``LinearProbe`` adapter).

FLAIR's probe is scikit-learn's ``LogisticRegression(C=0.316, max_iter=1000,
class_weight="balanced")`` on L2-normalised projected embeddings; its few-shot
experiments train it on k examples per class and average over random draws.
Here C is either that fixed value or chosen per training set by an inner
stratified CV on balanced accuracy.

Three entry points:
- :func:`fit_probe_and_score` -- an explicit train/test split;
- :func:`linear_probe_cv` -- stratified k-fold on one labelled set, mean ± std;
- :func:`kshot_probe` -- k training examples per class, mean ± std over trials.
"""

import logging
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

from shared_model.eval.metrics import SCALAR_METRICS, ClassificationMetrics, classification_metrics
from shared_model.eval.zero_shot import l2_normalize

log = logging.getLogger(__name__)

FLAIR_C = 0.316  # FLAIR's LinearProbe default (10**-0.5)
C_GRID = (0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0)  # half-decade steps around it
MAX_INNER_SPLITS = 3  # inner CV for C: cheap, and feasible on small classes


class ProbeMetrics(ClassificationMetrics):
    """Metrics of one fitted probe, with the regularisation C it used."""

    C: float


class ProbeCVResult(TypedDict):
    """Result of :func:`linear_probe_cv`."""

    n: int
    n_splits: int  # folds actually used
    n_splits_requested: int
    class_names: list[str]
    mean: dict[str, float | None]  # over folds, keys SCALAR_METRICS
    std: dict[str, float | None]  # population std (ddof=0), as FLAIR reports
    confusion_matrix: list[list[int]]  # sum over folds: every example tested once
    folds: list[ProbeMetrics]


class KShotResult(TypedDict):
    """Result of :func:`kshot_probe`."""

    k: int
    n_trials: int
    seed: int
    n: int  # test examples
    n_train: int  # training examples per trial = k * classes sampled
    class_names: list[str]
    mean: dict[str, float | None]  # over trials, keys SCALAR_METRICS
    std: dict[str, float | None]
    trials: list[ProbeMetrics]


def _check_xy(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, what: str) -> None:
    if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"{what}: expected (N, D) embeddings and (N,) labels with N >= 1, "
            f"got {embeddings.shape} and {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"{what}: labels must be integers in [0, {n_classes})")


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, C: float | None, C_grid: Sequence[float], max_iter: int, seed: int
) -> tuple[LogisticRegression, float]:
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise ValueError("a linear probe needs training examples of at least 2 classes")
    probe = LogisticRegression(class_weight="balanced", max_iter=max_iter)
    if C is not None:
        return probe.set_params(C=C).fit(x, y), float(C)
    n_inner = min(MAX_INNER_SPLITS, int(counts.min()))
    if n_inner < 2:
        raise ValueError(
            "choosing C by inner cross-validation needs >= 2 training examples per class; "
            "pass a fixed C instead"
        )
    search = GridSearchCV(
        probe,
        {"C": list(C_grid)},
        scoring="balanced_accuracy",
        cv=StratifiedKFold(n_inner, shuffle=True, random_state=seed),
    ).fit(x, y)
    return search.best_estimator_, float(search.best_params_["C"])


def fit_probe_and_score(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    test_emb: np.ndarray,
    test_y: np.ndarray,
    *,
    class_names: Sequence[str],
    C: float | None = FLAIR_C,
    C_grid: Sequence[float] = C_GRID,
    ordinal: bool = False,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeMetrics:
    """Fit the FLAIR class-balanced logistic-regression probe on train, score on test.

    Embeddings are L2-normalised first. ``C=None`` chooses C from ``C_grid`` by
    stratified inner CV (up to 3 folds) on balanced accuracy. Classes never
    seen in training get probability 0.
    """
    train_emb, test_emb = np.asarray(train_emb), np.asarray(test_emb)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    n_classes = len(class_names)
    _check_xy(train_emb, train_y, n_classes, "train")
    _check_xy(test_emb, test_y, n_classes, "test")

    probe, c_used = _fit_logistic(l2_normalize(train_emb), train_y, C, C_grid, max_iter, seed)
    proba = np.zeros((len(test_y), n_classes))
    proba[:, probe.classes_] = probe.predict_proba(l2_normalize(test_emb))
    return ProbeMetrics(**classification_metrics(test_y, proba, class_names, ordinal), C=c_used)


def _mean_std(runs: Sequence[ClassificationMetrics]) -> tuple[dict, dict]:
    # A metric undefined in some runs (AUC, kappa) is averaged over the runs
    # where it is defined; None if it is defined in none.
    mean, std = {}, {}
    for key in SCALAR_METRICS:
        values = [run[key] for run in runs if run[key] is not None]
        mean[key] = float(np.mean(values)) if values else None
        std[key] = float(np.std(values)) if values else None
    return mean, std


def linear_probe_cv(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    n_splits: int = 5,
    C: float | None = FLAIR_C,
    C_grid: Sequence[float] = C_GRID,
    ordinal: bool = False,
    max_iter: int = 1000,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> ProbeCVResult:
    """Stratified k-fold linear probe (FLAIR's probe, see :func:`fit_probe_and_score`).

    With ``groups`` (e.g. each image's patient) the folds keep every group on one side
    (scikit-learn's ``StratifiedGroupKFold``), so the two eyes of a patient are never one in
    training and one in test. The number of folds drops to the size of the smallest class when
    that is smaller than ``n_splits`` (recorded in the result); a class with a single
    example cannot be both trained on and tested, so it raises ``ValueError``.
    Classes with no example at all are simply absent (see ``metrics``).
    """
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    _check_xy(embeddings, labels, len(class_names), "linear_probe_cv")
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    counts = np.bincount(labels, minlength=len(class_names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise ValueError("linear_probe_cv needs examples of at least 2 classes")
    too_small = [class_names[c] for c in present if counts[c] < 2]
    if too_small:
        raise ValueError(f"stratified CV needs >= 2 examples per class; these have 1: {too_small}")
    k = min(n_splits, int(counts[present].min()))
    if k < n_splits:
        log.info("linear_probe_cv: smallest class has %d examples, using %d folds", k, k)

    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"linear_probe_cv: {len(groups)} groups for {len(labels)} examples")
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if groups is None else \
        StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    folds = []
    for train_idx, test_idx in splitter.split(embeddings, labels, groups):
        folds.append(
            fit_probe_and_score(
                embeddings[train_idx], labels[train_idx], embeddings[test_idx], labels[test_idx],
                class_names=class_names, C=C, C_grid=C_grid, ordinal=ordinal, max_iter=max_iter, seed=seed,
            )
        )
    mean, std = _mean_std(folds)
    return ProbeCVResult(
        n=len(labels),
        n_splits=k,
        n_splits_requested=n_splits,
        class_names=[str(name) for name in class_names],
        mean=mean,
        std=std,
        confusion_matrix=np.sum([fold["confusion_matrix"] for fold in folds], axis=0).tolist(),
        folds=folds,
    )


def sample_kshot_indices(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k examples drawn without replacement from every class present in ``labels``."""
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(f"class {c} has {len(members)} training examples, fewer than k={k}")
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def kshot_probe(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    test_emb: np.ndarray,
    test_y: np.ndarray,
    k: int,
    n_trials: int,
    seed: int = 0,
    *,
    class_names: Sequence[str],
    C: float | None = FLAIR_C,
    C_grid: Sequence[float] = C_GRID,
    ordinal: bool = False,
    max_iter: int = 1000,
) -> KShotResult:
    """Few-shot linear probe (FLAIR's few-shot transferability): mean ± std over trials.

    Each trial draws k training examples per class present in ``train_y``
    (seeded by ``seed``, trials differ), fits the probe on them and scores it on
    the whole test set. Every class present in ``train_y`` or ``test_y`` must
    have >= k training examples. A fixed C is the default because with k = 1
    no inner CV is possible.
    """
    train_emb, test_emb = np.asarray(train_emb), np.asarray(test_emb)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    _check_xy(train_emb, train_y, len(class_names), "train")
    _check_xy(test_emb, test_y, len(class_names), "test")
    if k < 1 or n_trials < 1:
        raise ValueError(f"k and n_trials must be >= 1, got k={k}, n_trials={n_trials}")
    train_counts = np.bincount(train_y, minlength=len(class_names))
    short = [class_names[c] for c in np.union1d(train_y, test_y) if train_counts[c] < k]
    if short:
        raise ValueError(f"fewer than k={k} training examples for classes {short}")

    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n_trials):
        idx = sample_kshot_indices(train_y, k, rng)
        trials.append(
            fit_probe_and_score(
                train_emb[idx], train_y[idx], test_emb, test_y,
                class_names=class_names, C=C, C_grid=C_grid, ordinal=ordinal, max_iter=max_iter, seed=seed,
            )
        )
    mean, std = _mean_std(trials)
    return KShotResult(
        k=k,
        n_trials=n_trials,
        seed=seed,
        n=len(test_y),
        n_train=k * int(np.count_nonzero(train_counts)),
        class_names=[str(name) for name in class_names],
        mean=mean,
        std=std,
        trials=trials,
    )
