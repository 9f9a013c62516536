"""Run outputs beyond checkpoints: ``metrics.jsonl`` (+ optional TensorBoard) and ``report.html``."""
