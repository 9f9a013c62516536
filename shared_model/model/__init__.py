"""The retinal vision-language model: image towers (MAE ViT, ResNet-50), text tower, MAE decoder,
slice-attention volume pooling, and their assembly into :class:`RetinaCLIP`."""

from shared_model.model.build import build_model
from shared_model.model.retina_clip import ModelOutput, RetinaCLIP

__all__ = ["build_model", "RetinaCLIP", "ModelOutput"]
