"""Per-unit DP-SGD clipping without per-sample gradients: ghost norms (Goodfellow 2015; Li et
al. 2022, "Large Language Models Can Be Strong Differentially Private Learners") and
book-keeping (Bu et al. 2023, "Differentially Private Optimization on Large Model at Small
Cost"), extended to privacy units of several images.

For a linear map applied to the tokens of an image, the weight gradient of image i is
G_iᵀA_i (A: input activations, G: output gradients, one row per token), and that of a unit u
is Σ_{i∈u} G_iᵀA_i. Its squared norm is Σ_{i,j∈u} ⟨A_iA_jᵀ, G_iG_jᵀ⟩: token-by-token Gram
matrices instead of an out×in gradient per image, cheaper whenever the images have fewer tokens
than the layer has weights per token. Once every unit's norm is known, the clipped sum of the
unit gradients is one ordinary weight-gradient product with every image's output gradient
scaled by its unit's clipping factor (book-keeping: no second backward pass). The weight
gradients autograd would compute are never used, so :meth:`GhostClipper.forward` runs the
forward pass with the linear and convolution weights detached from the graph: the backward pass
then only carries gradients to activations, and the clipped sum is the only weight gradient made.

Supported trainable leaf modules: ``nn.Linear``, ``nn.LayerNorm``, a patchifying ``nn.Conv2d``
(kernel = stride, no padding) and :class:`LearnedToken` — everything RetinaCLIP trains under
DP-SGD; a model with any other trainable module is refused (``clipping.make_clipper`` then picks
Opacus' hooks). A module called several times in one step contributes all its calls' tokens to one
gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from shared_model.model.tokens import LearnedToken
from shared_model.privacy.errors import PrivacyConfigError


def _patchify(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == conv.stride and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)
            and conv.groups == 1)


def unsupported_modules(model: nn.Module) -> list[str]:
    """Trainable leaf modules the ghost clipper cannot handle (empty: the model is supported)."""
    bad = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        ok = isinstance(module, (nn.Linear, nn.LayerNorm, LearnedToken)) or (
            isinstance(module, nn.Conv2d) and _patchify(module))
        if not ok:
            bad.append(f"{name} ({type(module).__name__})")
    return bad


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, ..., D] -> [B, T, D] (a 2-D input is one token per example)."""
    return x.unsqueeze(1) if x.dim() == 2 else x.reshape(x.shape[0], -1, x.shape[-1])


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The calls' [B, T_k, D] tokens side by side (no copy for the usual single call)."""
    parts = [_tokens(p) for p in parts]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


class _Pairs:
    """Where each image's unit is, and the pairs of distinct images that share a unit."""

    def __init__(self, units: torch.Tensor, device: torch.device):
        _, self.slot = torch.unique(units, return_inverse=True)
        self.slot = self.slot.to(device)
        self.count = int(self.slot.max()) + 1 if len(units) else 0
        i, j = torch.triu_indices(len(units), len(units), offset=1, device=device)
        same = self.slot[i] == self.slot[j]
        self.i, self.j = i[same], j[same]

    def unit_sum(self, per_image: torch.Tensor) -> torch.Tensor:
        """Per-image rows [B, ...] summed into per-unit rows [U, ...]."""
        out = per_image.new_zeros((self.count, *per_image.shape[1:]))
        return out.index_add_(0, self.slot, per_image)

    def gram_norms(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per-unit ||Σ_{i∈u} g_iᵀ a_i||² from [B, T, in] activations and [B, T, out] gradients."""
        norms = ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2))
        per_unit = a.new_zeros(self.count).index_add_(0, self.slot, norms)
        if len(self.i):
            cross = ((a[self.i] @ a[self.j].transpose(1, 2)) * (g[self.i] @ g[self.j].transpose(1, 2))).sum((1, 2))
            per_unit.index_add_(0, self.slot[self.i], 2 * cross)
        return per_unit


class GhostClipper:
    """Hooks on ``model``'s trainable modules; after ``loss.backward()``, :meth:`clip_and_sum`
    sets every parameter's ``summed_grad`` to Σ_u min(1, C/‖g_u‖)·g_u over the batch's units
    (a :class:`~shared_model.privacy.clipping.Clipper`)."""

    def __init__(self, model: nn.Module, max_grad_norm: float):
        bad = unsupported_modules(model)
        if bad:
            raise PrivacyConfigError("ghost clipping cannot handle these trainable modules: " + ", ".join(bad))
        self.max_grad_norm = max_grad_norm
        self.modules = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        self.trainable = {p for m in self.modules for p in m.parameters(recurse=False) if p.requires_grad}
        # Linear and convolution weights: their gradient is the book-keeping product, never autograd's.
        self.heavy = [p for m in self.modules if isinstance(m, (nn.Linear, nn.Conv2d))
                      for p in m.parameters(recurse=False) if p in self.trainable]
        self.skipping = False
        self.inputs: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in self.modules}
        self.grads: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in self.modules}
        self.handles = []
        for module in self.modules:
            self.handles.append(module.register_forward_pre_hook(self._graph_through))
            self.handles.append(module.register_forward_hook(self._keep_input))

    @contextmanager
    def forward(self) -> Iterator[None]:
        """A forward pass whose graph leaves the linear/convolution weights out (see module doc)."""
        for p in self.heavy:
            p.requires_grad_(False)
        self.skipping = True
        try:
            yield
        finally:
            self.skipping = False
            for p in self.heavy:
                p.requires_grad_(True)

    def _graph_through(self, module: nn.Module, args: tuple):
        # Without its weights in the graph, a layer fed by frozen layers (or by the images) would
        # drop out of the backward pass: its input becomes a leaf that asks for a gradient.
        if self.skipping and args and isinstance(args[0], torch.Tensor) and not args[0].requires_grad \
                and args[0].is_floating_point() and not isinstance(module, LearnedToken):
            return (args[0].detach().requires_grad_(True), *args[1:])
        return None

    def _keep_input(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        # The output's gradient is caught by a tensor hook: lighter than a module backward hook,
        # which wraps every input and output in an extra autograd node.
        if torch.is_grad_enabled() and output.requires_grad:
            self.inputs[module].append(None if isinstance(module, LearnedToken) else args[0].detach())
            grads = self.grads[module]
            output.register_hook(lambda grad: grads.insert(0, grad.detach()))  # backward visits calls in reverse

    def reset(self) -> None:
        """Forget what the hooks kept (before a new forward pass)."""
        for module in self.modules:
            self.inputs[module].clear()
            self.grads[module].clear()

    def _calls(self, module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor]:
        """All calls' tokens of one module: activations [B, T, in] (None for tokens) and output
        gradients [B, T, out] (of the batch-mean loss)."""
        grads = [g.float() for g in self.grads[module]]
        if isinstance(module, LearnedToken):
            return None, _joined(grads)
        acts = [a.float() for a in self.inputs[module]]
        if len(acts) != len(grads):  # a call whose output took no part in the loss: pairing unknowable
            raise RuntimeError(f"{type(module).__name__}: {len(acts)} forward calls but {len(grads)} gradients; "
                               "run calls that do not train under torch.no_grad()")
        if isinstance(module, nn.Conv2d):
            acts = [F.unfold(a, module.kernel_size, stride=module.stride).transpose(1, 2) for a in acts]
            grads = [g.flatten(2).transpose(1, 2) for g in grads]
        if isinstance(module, nn.LayerNorm):
            acts = [F.layer_norm(a, module.normalized_shape, eps=module.eps) for a in acts]
        return _joined(acts), _joined(grads)

    def clip_and_sum(self, units: torch.Tensor, batch_size: int) -> None:
        """Clipped per-unit gradient sum into ``p.summed_grad``; ``units``: each image's unit,
        ``batch_size``: the images the loss averaged over."""
        device = next(self.modules[0].parameters()).device
        pairs = _Pairs(units, device)
        calls = {m: self._calls(m) for m in self.modules if self.grads[m]}
        for module in self.modules:  # a module this step did not use: its gradient is zero
            if module not in calls:
                for param in module.parameters(recurse=False):
                    param.summed_grad = torch.zeros_like(param)
        norms = torch.zeros(pairs.count, device=device)
        small: dict[nn.Parameter, torch.Tensor] = {}  # per-image gradients of the small parameters
        for module, (a, g) in calls.items():
            if isinstance(module, LearnedToken):
                small[module.token] = g.sum(1)
            elif isinstance(module, nn.LayerNorm):
                if module.weight in self.trainable:
                    small[module.weight] = (g * a).sum(1)
                if module.bias in self.trainable:
                    small[module.bias] = g.sum(1)
            else:
                if module.weight in self.trainable:
                    norms += pairs.gram_norms(a, g)
                if module.bias in self.trainable:
                    small[module.bias] = g.sum(1)
        for per_image in small.values():
            norms += pairs.unit_sum(per_image).pow(2).sum(1)
        # The hooks saw gradients of the batch mean: an image's own loss gradient is batch_size x.
        norms = norms.sqrt() * batch_size
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)[pairs.slot] * batch_size
        for module, (a, g) in calls.items():
            if not isinstance(module, (LearnedToken, nn.LayerNorm)) and module.weight in self.trainable:
                scaled = (g * factor[:, None, None]).reshape(-1, g.shape[-1])
                weight = scaled.T @ a.reshape(-1, a.shape[-1])
                module.weight.summed_grad = weight.reshape(module.weight.shape).to(module.weight.dtype)
        for param, per_image in small.items():
            param.summed_grad = (per_image * factor[:, None]).sum(0).reshape(param.shape).to(param.dtype)
        self.reset()

    def empty_step(self) -> None:
        """An empty Poisson batch: zero ``summed_grad`` for every trainable parameter."""
        for p in self.trainable:
            p.summed_grad = torch.zeros_like(p)

    def close(self) -> None:
        """Take the hooks off the model and forget what they kept."""
        self.reset()
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
