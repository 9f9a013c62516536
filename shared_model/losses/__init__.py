"""Training objectives. Each loss is a small module that declares whether it is
per-example decomposable (``per_example_decomposable``): the privacy layer reads that flag
to allow DP-SGD only on objectives whose per-example clipping gives a valid guarantee."""

from shared_model.losses.clip_infonce import ClipInfoNCELoss
from shared_model.losses.flair_soft_targets import FlairSoftTargetLoss
from shared_model.losses.mae_reconstruction import MAEReconstructionLoss
from shared_model.losses.modality_contrast import ModalityContrastLoss
from shared_model.losses.objective import EyeCLIPObjective, ObjectiveOutput

__all__ = ["ClipInfoNCELoss", "FlairSoftTargetLoss", "MAEReconstructionLoss", "ModalityContrastLoss",
           "EyeCLIPObjective", "ObjectiveOutput"]
