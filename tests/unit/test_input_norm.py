"""Model-input normalisation: local contrast cancels smooth camera differences and keeps lesions;
an unknown setting is refused."""

import pytest
import torch

from shared_model.data.preprocess import local_contrast, normalize, to_model_input


def disc_image(size: int = 64, offset=(0.0, 0.0, 0.0), spot: bool = False) -> torch.Tensor:
    """[1, 3, S, S]: an orange disc on black (a field of view), optionally with a dark spot."""
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    inside = (xx ** 2 + yy ** 2 < 0.9 ** 2).float()
    base = torch.tensor([0.7, 0.35, 0.15]).view(3, 1, 1) + torch.tensor(offset).view(3, 1, 1)
    img = base * inside
    if spot:
        img = img * (1 - 0.6 * ((xx - 0.2) ** 2 + yy ** 2 < 0.05 ** 2).float())
    return img[None]


def test_constant_colour_cast_is_cancelled_inside_the_field():
    plain, cast = local_contrast(disc_image()), local_contrast(disc_image(offset=(0.08, -0.05, 0.1)))
    assert torch.allclose(plain, cast, atol=1e-4)
    assert not torch.allclose(disc_image(), disc_image(offset=(0.08, -0.05, 0.1)), atol=1e-2)


def test_lesions_survive_and_outside_is_grey():
    out = local_contrast(disc_image(spot=True))
    assert out[0, :, 32, 38].mean() < 0.2  # the dark spot is kept, amplified
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.5))


def test_model_input_applies_the_configured_normalisation():
    imgs = torch.cat([disc_image(), disc_image(spot=True)])
    assert torch.allclose(to_model_input(imgs, "local_contrast"), normalize(local_contrast(imgs)))
    assert torch.equal(to_model_input(imgs, "imagenet"), normalize(imgs))


def test_unknown_input_norm_is_refused():
    with pytest.raises(ValueError, match="input_norm"):
        to_model_input(disc_image(), "graham")
