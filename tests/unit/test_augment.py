"""Batched augmentation: neutral parameters are the identity, each operation does what it says,
parameters are reproducible per generator, and grey modalities get no colour change."""

import torch
from torchvision.transforms.v2 import functional as TF

from shared_model.data.augment import FIELDS, augment_batch, draw_params

NEUTRAL = dict(scale=1.0, ratio=1.0, top=0.0, left=0.0, flip=0.0, angle=0.0, brightness=1.0, contrast=1.0,
               gamma=1.0, gain_r=1.0, gain_g=1.0, gain_b=1.0, saturation=1.0, hue=0.0, illum_strength=0.0,
               illum_angle=0.0, vignette=0.0, blur_sigma=0.0)


def params(n: int = 4, **changes) -> torch.Tensor:
    return torch.tensor([[{**NEUTRAL, **changes}[f] for f in FIELDS]] * n)


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1


def test_neutral_parameters_leave_images_unchanged():
    x = images()
    assert torch.allclose(augment_batch(x, params()), x, atol=1e-5)


def test_flip_matches_torchvision():
    x = images()
    assert torch.allclose(augment_batch(x, params(flip=1.0)), TF.horizontal_flip(x), atol=1e-5)


def test_brightness_gains_and_gamma_match_their_definitions():
    x = images()
    assert torch.allclose(augment_batch(x, params(brightness=1.1)), (x * 1.1).clamp(0, 1), atol=1e-5)
    assert torch.allclose(augment_batch(x, params(gamma=1.2)), x ** 1.2, atol=1e-5)
    red = augment_batch(x, params(gain_r=1.2))
    assert torch.allclose(red[:, 0], (x[:, 0] * 1.2).clamp(0, 1), atol=1e-5)
    assert torch.allclose(red[:, 1:], x[:, 1:], atol=1e-5)


def test_zero_saturation_gives_grey_and_blur_matches_torchvision():
    grey = augment_batch(images(), params(saturation=0.0))
    assert (grey.max(1).values - grey.min(1).values).max() < 1e-5
    x = images(size=64)
    ours = augment_batch(x, params(blur_sigma=1.0))
    ref = TF.gaussian_blur(x, [5, 5], [1.0, 1.0])
    assert torch.allclose(ours, ref, atol=1e-4)
    assert not torch.allclose(ours, x, atol=1e-2)


def test_rotation_and_crop_move_content():
    x = images()
    assert not torch.allclose(augment_batch(x, params(angle=10.0)), x, atol=1e-2)
    zoomed = augment_batch(x, params(scale=0.8))
    assert not torch.allclose(zoomed, x, atol=1e-2)


def test_parameters_are_reproducible_and_grey_images_keep_neutral_colour():
    a = draw_params(torch.Generator().manual_seed(3), colour=True)
    b = draw_params(torch.Generator().manual_seed(3), colour=True)
    c = draw_params(torch.Generator().manual_seed(4), colour=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for seed in range(20):
        grey = dict(zip(FIELDS, draw_params(torch.Generator().manual_seed(seed), colour=False).tolist()))
        assert grey["gain_r"] == grey["gain_g"] == grey["gain_b"] == grey["saturation"] == 1.0
        assert grey["hue"] == grey["illum_strength"] == grey["vignette"] == 0.0
