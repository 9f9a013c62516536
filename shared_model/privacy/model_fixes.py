"""Make the model valid for DP-SGD, and say what changed.

Batch statistics mix the examples of a batch and void the per-example guarantee, so every
BatchNorm that still computes them is replaced. The batch centring of pooled features
(``image_norm``, ``text.norm``) becomes a :class:`FixedCentring` where the tower's features are
fixed: the text centre from the public prompt corpus at once (:func:`calibrate_text_centring`),
the image centre from one DP release at the site before its first step
(``privacy/feature_centre.py``). Where a tower trains, and for every other BatchNorm, Opacus'
registered fixer (GroupNorm) is used, whether or not the layer has parameters: Opacus'
``ModuleValidator.fix`` only visits modules with trainable parameters, so it would leave a
``BatchNorm1d(affine=False)`` in place. Then Opacus' validator must find nothing left. A frozen
BatchNorm of a pretrained CNN (``model.image.freeze_bn``) keeps its statistics: it is per example.
"""

from __future__ import annotations

from torch import nn

from shared_model.model.feature_centring import FixedCentring
from shared_model.model.retina_clip import RetinaCLIP

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def make_opacus_compatible(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Replace batch-coupled layers in place; returns the model and ``"name: Old -> New"`` lines."""
    from opacus.validators import ModuleValidator

    fixed_features = {}
    if isinstance(model, RetinaCLIP):
        fixed_features = {"image_norm": _frozen(model.visual), "text.norm": _frozen(model.text.encoder)}
    changes = []
    for name, module in list(model.named_modules()):
        if isinstance(module, BATCH_NORMS):
            if fixed_features.get(name):
                fixed = FixedCentring(module.num_features)
            else:
                fixed = ModuleValidator.FIXERS[type(module)](module)
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, fixed)
            changes.append(f"{name}: {module} -> {fixed}"
                           + (" (fixed centre)" if isinstance(fixed, FixedCentring) else ""))
    was_training = model.training
    model.train()
    errors = ModuleValidator.validate(model, strict=False)
    model.train(was_training)
    if errors:
        raise ValueError("model is not DP-SGD compatible after the fixes: " + "; ".join(map(str, errors)))
    if isinstance(model, RetinaCLIP) and isinstance(model.text.norm, FixedCentring):
        calibrate_text_centring(model)
    return model, changes


def calibrate_text_centring(model: nn.Module) -> None:
    """Centre the text features on the mean of the public prompt corpus (every dictionary
    category's prompt ensemble, the public bank of the DP objective): no private data, no ε."""
    from shared_model.losses.bank_contrast import PublicTextBank

    device = model.text.proj.weight.device
    features = PublicTextBank().encode(model, lambda texts: model.text.pooled_features(texts, device))
    model.text.norm.set_centre(nn.functional.normalize(features, dim=-1).mean(0))
