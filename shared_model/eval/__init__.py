"""Common evaluator, array level: everything here works on embeddings and labels.

Follows the FLAIR transferability protocol (Silva-Rodríguez et al., "A Foundation
Language-Image Model of the Retina", arXiv 2308.07898): zero-shot classification
with prompt ensembles, ACA (balanced accuracy) as the headline metric, a
class-balanced logistic-regression linear probe, k-shot probes and image-text
retrieval Recall@K.

Modules (import the one you need; this package re-exports nothing so that
importing it stays cheap):

- ``metrics``      -- ``classification_metrics``: ACA, accuracy, macro-F1, AUC, kappa,
                      confusion matrix from labels and scores.
- ``zero_shot``    -- ``zero_shot_logits``, ``ensemble_class_embedding``, ``l2_normalize``.
- ``linear_probe`` -- ``linear_probe_cv``, ``fit_probe_and_score``, ``kshot_probe``.
- ``retrieval``    -- ``retrieval_metrics``: Recall@K and mean/median rank both ways.
- ``report``       -- ``write_report`` (metrics.json, confusion PNGs, summary.md) and
                      ``render_table`` for the terminal.

Computing the embeddings from a checkpoint is the caller's job; every result
here is a plain JSON-serialisable dict.
"""
