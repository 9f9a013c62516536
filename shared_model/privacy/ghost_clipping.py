"""Per-unit DP-SGD clipping without a second backward pass: ghost norms (Goodfellow 2015; Li et
al. 2022, "Large Language Models Can Be Strong Differentially Private Learners"), chosen per
layer against per-image gradients as in mixed ghost clipping (Bu et al. 2022, "Scalable and
Efficient Training of Large Convolutional Neural Networks with Differential Privacy"), and
book-keeping (Bu et al. 2023, "Differentially Private Optimization on Large Model at Small Cost"),
extended to privacy units of several images.

For a linear map applied to the tokens of an image (a convolution: its unfolded patches), the
weight gradient of image i is G_iᵀA_i (A: input activations, G: output gradients, one row per
token), and that of a unit u is Σ_{i∈u} G_iᵀA_i. Its squared norm is Σ_{i,j∈u} ⟨A_iA_jᵀ, G_iG_jᵀ⟩:
token-by-token Gram matrices instead of an out×in gradient per image. Each layer takes the cheaper
way: the Grams cost ~2T²(in+out) per pair of images; the per-image gradients cost the weight
gradient itself, which book-keeping then reuses, plus a few passes over B×in×out numbers. Small
parameters (biases, norms' affine, tokens) and grouped (depthwise) convolutions, whose per-image
gradients are small, always take the per-image way. Once every unit's norm is known, the clipped
sum of a Gram layer's unit gradients is one ordinary weight-gradient product with every image's
output gradient scaled by its unit's clipping factor, and that of a per-image layer one weighted
sum of its unit gradients (book-keeping: no second backward pass). The weight gradients autograd
would compute are never used, so :meth:`GhostClipper.forward` runs the forward pass with the
linear and convolution weights detached from the graph: the backward pass then only carries
gradients to activations, and the clipped sum is the only weight gradient made.

Supported trainable leaf modules: ``nn.Linear``, ``nn.LayerNorm``, ``nn.Conv2d`` and timm's
``Conv2dSame`` (any padding, stride, dilation and groups), ``nn.BatchNorm2d`` in eval mode (frozen
running statistics: per example) and :class:`LearnedToken` — RetinaCLIP's ViT and its pretrained
EfficientNet tower; a model with any other trainable module is refused (``clipping.make_clipper``
then picks Opacus' hooks). A module called several times in one step contributes all its calls'
tokens to one gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, pad_same
from torch import nn

from shared_model.model.tokens import LearnedToken
from shared_model.privacy.errors import PrivacyConfigError

CONVS = (nn.Conv2d, Conv2dSame)  # exact types: a subclass may change what forward computes
# What the per-image way costs beyond its product, in flops per per-image gradient entry: writing
# and re-reading B×in×out numbers (norms, weighted sum) bounds a product over few tokens by memory.
# 64 is where the two ways broke even for the ViT presets' layers on CPU (bench/dp_overhead.py).
PASS_COST = 64
SMALL = 16384  # per-image gradients of parameters up to this size are handled side by side
# A depthwise 3x3 layer with at least this many output positions takes the library's weight
# gradient image by image (faster there than tap-by-tap sums on CPU; bench/dp_overhead.py).
BY_IMAGE_POSITIONS = 1024


def _supported(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.LayerNorm, LearnedToken)) or type(module) in (*CONVS, nn.BatchNorm2d)


def unsupported_modules(model: nn.Module) -> list[str]:
    """Trainable leaf modules the ghost clipper cannot handle (empty: the model is supported)."""
    return [f"{name} ({type(module).__name__})" for name, module in model.named_modules()
            if any(p.requires_grad for p in module.parameters(recurse=False)) and not _supported(module)]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, ..., D] -> [B, T, D] (a 2-D input is one token per example)."""
    return x.unsqueeze(1) if x.dim() == 2 else x.reshape(x.shape[0], -1, x.shape[-1])


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The calls' [B, T_k, D] tokens side by side (no copy for the usual single call)."""
    parts = [_tokens(p) for p in parts]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _conv_input(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as the convolution reads it, and the zero padding it still adds."""
    if type(conv) is Conv2dSame:  # TF's 'SAME': padded in forward, by the input's size
        return pad_same(x, conv.kernel_size, conv.stride, conv.dilation), (0, 0)
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return F.pad(x, conv._reversed_padding_repeated_twice,
                     mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode), (0, 0)
    return x, conv.padding


def _conv_tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> the patches each output position reads, [B, T, C·kh·kw] (weight order)."""
    x, padding = _conv_input(conv, x)
    if conv.kernel_size == (1, 1) and padding == (0, 0):  # no copy of a channels-last input
        return x[:, :, ::conv.stride[0], ::conv.stride[1]].flatten(2).transpose(1, 2)
    return F.unfold(x, conv.kernel_size, conv.dilation, padding, conv.stride).transpose(1, 2)


def _grouped_per_image(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-image weight gradients [B, *weight] of a grouped convolution (not depthwise: see
    :func:`_depthwise_per_image`): the batch folded into the groups, one weight-gradient convolution."""
    x, padding = _conv_input(conv, x)
    b = len(x)
    weight = torch.nn.grad.conv2d_weight(x.reshape(1, -1, *x.shape[2:]),
                                         (b * conv.out_channels, *conv.weight.shape[1:]),
                                         g.reshape(1, -1, *g.shape[2:]), conv.stride, padding, conv.dilation,
                                         b * conv.groups)
    return weight.view(b, *conv.weight.shape)


def _depthwise_per_image(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-image weight gradients [B, *weight] of a depthwise convolution (one filter per channel):
    for a 3x3 kernel over many output positions, the library's depthwise weight gradient image
    by image; otherwise one sum of (input window x output gradient) per kernel tap, each a pass
    over B x C x positions numbers. Both beat folding the batch into the groups
    (:func:`_grouped_per_image`), 2-3x slower on EfficientNet-Lite0's 5x5 layers on CPU."""
    x, padding = _conv_input(conv, x)
    kh, kw = conv.kernel_size
    h, w = g.shape[2:]
    if (kh, kw) == (3, 3) and h * w >= BY_IMAGE_POSITIONS:
        return torch.stack([torch.nn.grad.conv2d_weight(x[i:i + 1], conv.weight.shape, g[i:i + 1], conv.stride,
                                                        padding, conv.dilation, conv.groups) for i in range(len(x))])
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if padding != (0, 0) else x
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    out = g.new_empty(len(x), conv.out_channels, kh, kw)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i * dh:i * dh + (h - 1) * sh + 1:sh, j * dw:j * dw + (w - 1) * sw + 1:sw]
            torch.sum(window * g, (2, 3), out=out[:, :, i, j])
    return out.view(len(x), *conv.weight.shape)


def _batch_norm_input(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """x̂ = (x - running mean) / √(running var + eps), [B, C, H, W]."""
    return (x - bn.running_mean[:, None, None]) * torch.rsqrt(bn.running_var + bn.eps)[:, None, None]


class _Anchor(torch.autograd.Function):
    """The identity, put into the graph by a leaf that takes no gradient: a layer whose input and
    (detached) weight need none still gets its output gradient, and nothing flows below it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None]:
        return None, None


class _Units:
    """Where each image's unit is, and the pairs of distinct images (i < j) that share one: a
    unit's squared norm is Σ_{i∈u} ‖g_i‖² + 2 Σ_{pairs in u} ⟨g_i, g_j⟩, g_i the image's gradient."""

    def __init__(self, units: torch.Tensor, device: torch.device):
        _, slot = torch.unique(units, return_inverse=True)
        self.images = len(units)
        self.count = int(slot.max()) + 1 if len(units) else 0
        self.distinct = self.count == self.images  # then unit k is image k: no sums, no gathers
        self.slot = torch.arange(self.images, device=device) if self.distinct else slot.to(device)
        i, j = torch.triu_indices(self.images, self.images, offset=1, device=device)
        same = self.slot[i] == self.slot[j]
        self.i, self.j = i[same], j[same]
        self.squares = torch.zeros(self.images, device=device)  # Σ over parameters of ‖g_i‖²
        self.cross = torch.zeros(len(self.i), device=device)  # Σ over parameters of ⟨g_i, g_j⟩

    def add_gram(self, a: torch.Tensor, g: torch.Tensor) -> None:
        """Add a layer's terms from [B, T, in] activations and [B, T, out] output gradients:
        ⟨g_i, g_j⟩ = ⟨A_iA_jᵀ, G_iG_jᵀ⟩."""
        self.squares += ((a @ a.mT) * (g @ g.mT)).sum((1, 2))
        if len(self.i):
            a_i, a_j = a.index_select(0, self.i), a.index_select(0, self.j)
            g_i, g_j = g.index_select(0, self.i), g.index_select(0, self.j)
            self.cross += ((a_i @ a_j.mT) * (g_i @ g_j.mT)).sum((1, 2))

    def add_per_image(self, x: torch.Tensor) -> None:
        """Add the terms of per-image gradients [B, N]."""
        if len(self.i):
            products = x @ x.T  # [B, B]: one pass over x
            self.squares += products.diagonal()
            self.cross += products[self.i, self.j]
        else:
            self.squares += torch.linalg.vector_norm(x, dim=1).square()

    def norms(self) -> torch.Tensor:
        """Every unit's gradient norm [U]."""
        if self.distinct:
            return self.squares.sqrt()
        squares = self.squares.new_zeros(self.count).index_add_(0, self.slot, self.squares)
        return squares.index_add_(0, self.slot[self.i], 2 * self.cross).sqrt()

    def per_image(self, per_unit: torch.Tensor) -> torch.Tensor:
        """A per-unit value [U] for each image [B]."""
        return per_unit if self.distinct else per_unit[self.slot]

    def use_gram(self, tokens: int, d_in: int, d_out: int) -> bool:
        """Whether Gram norms cost less than per-image gradients. Book-keeping reuses the latter
        as the clipped sum's product, so only what else they cost counts against the Grams:
        passes over memory, and with shared units the B×B inner products."""
        gram = 2 * tokens ** 2 * (d_in + d_out) * (self.images + len(self.i))
        per_image = (PASS_COST + (2 * self.images if len(self.i) else 0)) * self.images * d_in * d_out
        return gram < per_image


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
        self.anchor = torch.zeros((), requires_grad=True)
        self.inputs: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in self.modules}
        self.grads: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in self.modules}
        self.handles = [module.register_forward_hook(self._keep_input) for module in self.modules]

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

    def _keep_input(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        # Without its weights in the graph, a layer fed by frozen layers (or by the images) would
        # drop out of the backward pass: the anchor keeps its output in, at no cost below it.
        if self.skipping and torch.is_grad_enabled() and not output.requires_grad and output.is_floating_point():
            output = _Anchor.apply(output, self.anchor)
        if not (torch.is_grad_enabled() and output.requires_grad):
            return None
        if type(module) is nn.BatchNorm2d and (module.training or module.running_mean is None):
            raise RuntimeError("ghost clipping needs BatchNorm2d in eval mode: batch statistics couple the images")
        self.inputs[module].append(None if isinstance(module, LearnedToken) else args[0].detach())
        # The output's gradient is caught by a tensor hook: lighter than a module backward hook,
        # which wraps every input and output in an extra autograd node.
        grads = self.grads[module]
        output.register_hook(lambda grad: grads.insert(0, grad.detach()))  # backward visits calls in reverse
        return output

    def reset(self) -> None:
        """Forget what the hooks kept (before a new forward pass)."""
        for module in self.modules:
            self.inputs[module].clear()
            self.grads[module].clear()

    def _calls(self, module: nn.Module) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        """Every call's input (None for tokens) and output gradient (of the batch-mean loss)."""
        grads = [g.float() for g in self.grads[module]]
        acts = [None if a is None else a.float() for a in self.inputs[module]]
        if len(acts) != len(grads):  # a call whose output took no part in the loss: pairing unknowable
            raise RuntimeError(f"{type(module).__name__}: {len(acts)} forward calls but {len(grads)} gradients; "
                               "run calls that do not train under torch.no_grad()")
        return acts, grads

    def _per_image(self, module: nn.Module, acts: list, grads: list) -> dict[nn.Parameter, torch.Tensor]:
        """Per-image gradients [B, ...] of the module's parameters that never take the Gram way."""
        out: dict[nn.Parameter, torch.Tensor] = {}
        if isinstance(module, LearnedToken):
            return {module.token: _joined(grads).sum(1)}
        if type(module) in CONVS:
            if module.groups > 1 and module.weight in self.trainable:
                depthwise = module.groups == module.in_channels == module.out_channels
                per_image = _depthwise_per_image if depthwise else _grouped_per_image
                out[module.weight] = sum(per_image(module, a, g) for a, g in zip(acts, grads))
            if module.bias in self.trainable:
                out[module.bias] = sum(g.sum((2, 3)) for g in grads)
            return out
        if type(module) is nn.BatchNorm2d:
            normalised = [_batch_norm_input(module, a) for a in acts]
            weight = sum((g * x).sum((2, 3)) for g, x in zip(grads, normalised))
            bias = sum(g.sum((2, 3)) for g in grads)
        elif isinstance(module, nn.LayerNorm):
            normalised = _joined([F.layer_norm(a, module.normalized_shape, eps=module.eps) for a in acts])
            g = _joined(grads)
            weight, bias = (g * normalised).sum(1), g.sum(1)
        else:  # nn.Linear: the bias only
            weight, bias = None, _joined(grads).sum(1)
        for param, value in ((module.weight, weight), (module.bias, bias)):
            if param in self.trainable and value is not None:
                out[param] = value
        return out

    def _weight_tokens(self, module: nn.Module, acts: list, grads: list) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Activations [B, T, in] and output gradients [B, T, out] of a trained linear or
        ungrouped convolution weight (None: the module has no such weight)."""
        if isinstance(module, nn.Linear) and module.weight in self.trainable:
            return _joined(acts), _joined(grads)
        if type(module) in CONVS and module.groups == 1 and module.weight in self.trainable:
            return (_joined([_conv_tokens(module, a) for a in acts]),
                    _joined([g.flatten(2).transpose(1, 2) for g in grads]))
        return None

    def clip_and_sum(self, units: torch.Tensor, batch_size: int) -> None:
        """Clipped per-unit gradient sum into ``p.summed_grad``; ``units``: each image's unit,
        ``batch_size``: the images the loss averaged over."""
        device = next(self.modules[0].parameters()).device
        unit = _Units(units, device)
        gram: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor]] = {}  # weight -> (activations, gradients)
        per_image: dict[nn.Parameter, torch.Tensor] = {}
        for module in self.modules:
            if not self.grads[module]:  # a module this step did not use: its gradient is zero
                for param in module.parameters(recurse=False):
                    param.summed_grad = torch.zeros_like(param)
                continue
            acts, grads = self._calls(module)
            per_image.update(self._per_image(module, acts, grads))
            tokens = self._weight_tokens(module, acts, grads)
            if tokens is None:
                continue
            a, g = tokens
            if unit.use_gram(a.shape[1], a.shape[2], g.shape[2]):
                unit.add_gram(a, g)
                gram[module.weight] = (a, g)
            else:
                per_image[module.weight] = g.mT @ a  # [B, out, in]
        # Per-image gradients as [B, N] blocks: the small ones side by side, each large one alone.
        small = [p for p in per_image if p.numel() < SMALL]
        blocks = [(small, torch.cat([per_image[p].reshape(unit.images, -1) for p in small], 1))] if small else []
        blocks += [([p], x.reshape(unit.images, -1)) for p, x in per_image.items() if p.numel() >= SMALL]
        for _, x in blocks:
            unit.add_per_image(x)
        # The hooks saw gradients of the batch mean: an image's own loss gradient is batch_size x.
        norms = unit.norms() * batch_size
        factor = unit.per_image((self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * batch_size)
        for params, x in blocks:
            for param, part in zip(params, (factor @ x).split([p.numel() for p in params])):
                param.summed_grad = part.view(param.shape).to(param.dtype)
        for param, (a, g) in gram.items():
            if a.shape[-1] < g.shape[-1]:  # scale the narrower side
                a = a * factor[:, None, None]
            else:
                g = g * factor[:, None, None]
            weight = g.reshape(-1, g.shape[-1]).T @ a.reshape(-1, a.shape[-1])
            param.summed_grad = weight.view(param.shape).to(param.dtype)
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
