"""Common evaluator: ``evaluate`` embeds the evaluation sets with a model; every other module
works on arrays (embeddings, labels, scores).

Follows the FLAIR transferability protocol (Silva-Rodríguez et al., "A Foundation
Language-Image Model of the Retina", arXiv 2308.07898): zero-shot classification
with prompt ensembles, ACA (balanced accuracy) as the headline metric, a
class-balanced logistic-regression linear probe, k-shot probes and image-text
retrieval Recall@K.

Modules (import the one you need; this package re-exports nothing so that
importing it stays cheap):

- ``evaluate``     -- ``evaluate_model`` (embeds ``eval.sets`` with a model, scores them), ``run_evaluation``.
- ``metrics``      -- ``classification_metrics``: ACA, accuracy, macro-F1, AUC, kappa, confusion matrix.
- ``zero_shot``    -- ``zero_shot_logits``, ``ensemble_class_embedding``, ``l2_normalize``.
- ``linear_probe`` -- ``linear_probe_cv``, ``fit_probe_and_score``, ``kshot_probe``.
- ``retrieval``    -- ``retrieval_metrics``: Recall@K and mean/median rank both ways.
- ``report``       -- ``write_report`` (metrics.json, confusion PNGs, summary.md), ``render_table`` (terminal).

Every result is a plain JSON-serialisable dict.
"""
