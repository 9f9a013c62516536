"""Make the model valid for DP-SGD with Opacus' module fixers, and say what changed.

Opacus' ``ModuleValidator.fix`` only visits modules with trainable parameters, so it leaves a
``BatchNorm1d(affine=False)`` — our batch centring of image and text features — in place,
although batch statistics mix examples and void the per-example guarantee. Every BatchNorm is
therefore replaced here with Opacus' registered fixer (GroupNorm, computed per example), whether
or not it has parameters; then Opacus' validator must find nothing left.
"""

from __future__ import annotations

from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def make_opacus_compatible(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Replace batch-coupled layers in place; returns the model and ``"name: Old -> New"`` lines."""
    from opacus.validators import ModuleValidator

    changes = []
    for name, module in list(model.named_modules()):
        if isinstance(module, BATCH_NORMS):
            fixed = ModuleValidator.FIXERS[type(module)](module)
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, fixed)
            changes.append(f"{name}: {module} -> {fixed}")
    was_training = model.training
    model.train()
    errors = ModuleValidator.validate(model, strict=False)
    model.train(was_training)
    if errors:
        raise ValueError("model is not DP-SGD compatible after the fixes: " + "; ".join(map(str, errors)))
    return model, changes
