"""RetinaFL shared model library: model, losses, prompts, data, trainer and evaluator.

Everything the coordinator, the sites and the synthetic-data module import lives
here; nothing in this package imports Flower or the other top-level packages.
"""

__version__ = "0.1.0"
