"""Image-text retrieval: Recall@K and mean/median rank (CLIP / FLAIR-style cross-modal retrieval).

For every query, the rank of its best-ranked correct item in the gallery; R@K
is the share of queries whose rank is <= K. Several correct items per query are
allowed (an image with several reports, or identical captions shared by
several images): the query counts as found at the first of them.

Ties count against the query: rank = 1 + number of *wrong* gallery items
scoring at least as high as the best correct one. A collapsed model (all
similarities equal) therefore gets the worst rank, never R@1 = 1.
"""

from collections.abc import Collection, Sequence
from typing import TypedDict

import numpy as np

DEFAULT_KS = (1, 5, 10)


class DirectionMetrics(TypedDict):
    """Retrieval in one direction; ``recall`` maps "R@K" to the share of queries found."""

    n_queries: int  # queries with at least one correct item
    recall: dict[str, float]
    mean_rank: float
    median_rank: float


class RetrievalMetrics(TypedDict):
    """Result of :func:`retrieval_metrics`."""

    n_images: int
    n_texts: int
    image_to_text: DirectionMetrics
    text_to_image: DirectionMetrics


def _positive_mask(img_to_txt: Sequence[Collection[int]] | np.ndarray, n_img: int, n_txt: int) -> np.ndarray:
    if len(img_to_txt) != n_img:
        raise ValueError(f"img_to_txt has {len(img_to_txt)} entries for {n_img} images")
    positives = np.zeros((n_img, n_txt), dtype=bool)
    for i, texts in enumerate(img_to_txt):
        texts = np.asarray(list(texts) if isinstance(texts, Collection) else [texts], dtype=int)
        if texts.size and (texts.min() < 0 or texts.max() >= n_txt):
            raise ValueError(f"image {i} is paired with text indices outside [0, {n_txt}): {texts.tolist()}")
        positives[i, texts] = True
    return positives


def _direction(similarity: np.ndarray, positives: np.ndarray, ks: Sequence[int]) -> DirectionMetrics:
    # similarity, positives: [queries, gallery]
    has_positive = positives.any(axis=1)
    if not has_positive.any():
        raise ValueError("no query has a correct item in the gallery")
    sim, pos = similarity[has_positive], positives[has_positive]
    best_positive = np.where(pos, sim, -np.inf).max(axis=1, keepdims=True)
    ranks = 1 + np.sum((sim >= best_positive) & ~pos, axis=1)
    return DirectionMetrics(
        n_queries=len(ranks),
        recall={f"R@{k}": float(np.mean(ranks <= k)) for k in ks},
        mean_rank=float(ranks.mean()),
        median_rank=float(np.median(ranks)),
    )


def retrieval_metrics(
    similarity: np.ndarray,
    img_to_txt: Sequence[Collection[int]] | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalMetrics:
    """Image->text and text->image Recall@K, mean and median rank.

    Args:
        similarity: (N_img, N_txt) image-text similarities (e.g. cosine).
        img_to_txt: ground-truth pairing, either one collection of text indices
            per image, or an (N_img,) integer array for 1:1 pairing (image i
            matches text ``img_to_txt[i]``; repeats mean a text matches several
            images).
        ks: the K of R@K.

    Queries without any correct item (an image with no report, a distractor
    text) are left out of that direction's averages but stay in the gallery
    of the other; ``n_queries`` says how many were used.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (N_img, N_txt), got shape {similarity.shape}")
    if not np.all(np.isfinite(similarity)):
        raise ValueError("similarity contains NaN or infinite values")
    n_img, n_txt = similarity.shape
    positives = _positive_mask(img_to_txt, n_img, n_txt)
    return RetrievalMetrics(
        n_images=n_img,
        n_texts=n_txt,
        image_to_text=_direction(similarity, positives, ks),
        text_to_image=_direction(similarity.T, positives.T, ks),
    )
