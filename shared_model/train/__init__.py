"""The local trainer: one loop for centralized runs and for federated sites."""

from shared_model.train.trainer import LocalTrainer, TrainStats

__all__ = ["LocalTrainer", "TrainStats"]
