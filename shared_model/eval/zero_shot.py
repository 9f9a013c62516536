"""Zero-shot classification by image-text cosine similarity (CLIP; FLAIR arXiv 2308.07898).

A class is represented by the ensemble of its prompt embeddings (FLAIR builds
the prompts from an expert-knowledge dictionary); an image is scored against
every class by ``logit_scale * cos(image, class)``. Feed the logits to
:func:`shared_model.eval.metrics.classification_metrics`, which applies softmax.
"""

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Divide ``x`` by its L2 norm along ``axis`` (norms below ``eps`` count as ``eps``)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def ensemble_class_embedding(prompt_embeddings: np.ndarray) -> np.ndarray:
    """Class embedding (D,) from its P prompt embeddings (P, D): mean of normalised, re-normalised.

    This is CLIP's prompt ensembling (open_clip ``build_zero_shot_classifier``).
    FLAIR's reference code skips the final re-normalisation; with it, every class
    competes on cosine similarity alone, whatever the spread of its prompts.
    """
    prompt_embeddings = np.asarray(prompt_embeddings)
    if prompt_embeddings.ndim != 2 or len(prompt_embeddings) == 0:
        raise ValueError(f"expected (P, D) prompt embeddings with P >= 1, got {prompt_embeddings.shape}")
    return l2_normalize(l2_normalize(prompt_embeddings).mean(axis=0))


def zero_shot_logits(
    image_embeddings: np.ndarray,
    class_embeddings: np.ndarray,
    logit_scale: float = 100.0,
) -> np.ndarray:
    """Zero-shot logits (N, C) = ``logit_scale`` * cosine(image (N, D), class (C, D)).

    Both inputs are L2-normalised here, so raw tower outputs are fine. The
    default 100 is the upper clamp of the learnt scale in CLIP and FLAIR. The
    scale changes no argmax (ACA, accuracy, F1, kappa), only the softmax
    sharpness, which can move the one-vs-rest AUC a little.
    """
    image_embeddings = np.asarray(image_embeddings)
    class_embeddings = np.asarray(class_embeddings)
    if image_embeddings.ndim != 2 or class_embeddings.ndim != 2:
        raise ValueError(
            f"expected (N, D) and (C, D) arrays, got {image_embeddings.shape} and {class_embeddings.shape}"
        )
    if image_embeddings.shape[1] != class_embeddings.shape[1]:
        raise ValueError(
            f"embedding widths differ: images D={image_embeddings.shape[1]}, "
            f"classes D={class_embeddings.shape[1]}"
        )
    return logit_scale * l2_normalize(image_embeddings) @ l2_normalize(class_embeddings).T
