"""Fixed feature centres under DP-SGD: the text centre from the public prompt corpus, the image
centre of a frozen tower released once with the Gaussian mechanism and accounted in the ledger,
and DP-SGD noise calibrated for both together."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from shared_model.conf import compose_app
from shared_model.data.dataset import load_slices
from shared_model.data.manifest import load_manifest
from shared_model.data.preprocess import to_model_input
from shared_model.losses.bank_contrast import PublicTextBank
from shared_model.model import build_model
from shared_model.model.feature_centring import FixedCentring
from shared_model.privacy.accounting import calibrate_noise, epsilon
from shared_model.privacy.feature_centre import centre_pending, release_image_centre, unit_feature_sum
from shared_model.privacy.session import DPSession
from shared_model.privacy.units import unit_ids


@pytest.fixture(scope="module")
def frozen_dp_model():
    """EfficientNet-Lite0 with its whole tower frozen, at 64 px, fixed for DP-SGD."""
    cfg = compose_app("train", ["+experiment=real", "privacy=dp_sgd", "model.image.trainable_stages=0",
                                "model.image.image_size=64"])
    return cfg, build_model(dataclasses.replace(cfg.model, opacus_compatible=True))


@pytest.fixture(scope="module")
def records(small_phantom):
    return load_manifest(small_phantom / "site_0" / "manifest.csv").select("train")


def test_text_centre_is_the_mean_of_the_public_prompts(frozen_dp_model):
    _, model = frozen_dp_model
    assert isinstance(model.text.norm, FixedCentring) and float(model.text.norm.calibrated) == 1.0
    bank = PublicTextBank()
    device = model.text.proj.weight.device
    centred = model.text.norm(bank.encode(model, lambda texts: model.text.pooled_features(texts, device)))
    assert centred.mean(0).abs().max() < 1e-4  # the prompts' mean is exactly removed
    raw = F.normalize(model.text.pooled_features(bank.prompts[0], device), dim=-1)
    assert raw.mean(0).norm() > 0.5  # ... and it is a large shared direction


def test_image_centre_release_sums_unit_means_and_adds_the_planned_noise(frozen_dp_model, records):
    cfg, model = frozen_dp_model
    assert isinstance(model.image_norm, FixedCentring) and centre_pending(model)
    units = unit_ids(records, "patient")
    total = unit_feature_sum(model, records, units, 64, torch.device("cpu"))
    imgs = to_model_input(torch.stack([load_slices(r, 64)[0] for r in records]), model.input_norm)
    with torch.no_grad():
        features = F.normalize(model.tower_features(imgs), dim=-1)
    by_unit = {}
    for unit, feature in zip(units, features):
        by_unit.setdefault(unit, []).append(feature)
    expected = sum(torch.stack(f).mean(0) for f in by_unit.values())
    assert torch.allclose(total, expected, atol=1e-4)
    n = len(by_unit)
    release_image_centre(model, records, units, n, 3.0, 64, torch.device("cpu"))
    assert not centre_pending(model)
    noise = model.image_norm.centre * n - total
    assert 2.7 < float(noise.std()) < 3.3  # σ = 3 on each of the 1280 coordinates


def test_session_releases_once_and_the_plan_spends_exactly_the_budget(frozen_dp_model, records, tmp_path):
    cfg, model = frozen_dp_model
    model = build_model(dataclasses.replace(cfg.model, opacus_compatible=True))
    p = cfg.privacy
    session = DPSession.open(tmp_path, p, model, records, 8, 50, trained_before=False)
    plan = session.plan
    assert plan.noise_multiplier > calibrate_noise(p.accountant, p.epsilon_budget, plan.delta, plan.sample_rate, 50)
    session.prepare(64, torch.device("cpu"))
    assert not centre_pending(model) and session.ledger.history == [[p.centre_noise_multiplier, 1.0, 1]]
    spent = session.record(50, {"round": 1})
    assert spent == pytest.approx(p.epsilon_budget, abs=0.02)
    assert spent == pytest.approx(epsilon(p.accountant, [(p.centre_noise_multiplier, 1.0, 1),
                                                         (plan.noise_multiplier, plan.sample_rate, 50)], plan.delta))
    again = DPSession.open(tmp_path, p, model, records, 8, 50, trained_before=True)
    again.prepare(64, torch.device("cpu"))  # the model is centred already: nothing is released
    assert len(again.ledger.history) == 2 and not again.allows(1)
