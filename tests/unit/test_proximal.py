"""FedProx's proximal term: zero at the anchor, mu/2 ||w - w0||^2 away from it, gradient
mu (w - w0), frozen parameters ignored; and a negative mu is refused."""

import pytest
import torch
from torch import nn

from shared_model.train.proximal import ProximalTerm


def test_value_and_gradient_match_the_definition():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)
    term = ProximalTerm(model, mu=0.5)
    assert term(model).item() == 0.0
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    value = term(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = 0.25 * sum(((dict(model.named_parameters())[n] - anchor[n]) ** 2).sum() for n in trainable)
    assert torch.allclose(value, expected)
    value.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, 0.5 * (p.detach() - anchor[name]))
        else:
            assert p.grad is None


def test_negative_mu_is_refused():
    with pytest.raises(ValueError, match="mu"):
        ProximalTerm(nn.Linear(2, 2), mu=-1.0)
