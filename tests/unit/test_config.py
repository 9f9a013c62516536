"""Hydra composition: every config group composes, presets have the documented sizes, and
unknown keys or wrong types fail naming the key."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from shared_model.config import EvalAppConfig, TrainAppConfig
from shared_model.model import build_model
from shared_model.conf import compose_app

PRESETS = {"tiny": (64, 192), "small": (128, 384), "base": (224, 768), "resnet50": (224, None),
           "efficientnet_lite0": (128, None)}


@pytest.mark.parametrize("model", sorted(PRESETS))
@pytest.mark.parametrize("train", ["default", "demo", "real"])
@pytest.mark.parametrize("eval_group", ["phantom", "real", "odir_val", "none"])
def test_every_group_composes(model, train, eval_group):
    cfg = compose_app("train", [f"model={model}", f"train={train}", f"eval={eval_group}"])
    assert isinstance(cfg, TrainAppConfig)
    size, width = PRESETS[model]
    assert cfg.model.image.image_size == size
    if width:
        assert cfg.model.image.width == width and cfg.model.mae.enabled
    else:
        assert not cfg.model.mae.enabled


def test_demo_experiment_overrides_only_what_it_names():
    cfg = compose_app("train", ["+experiment=demo"])
    assert cfg.train.max_seconds == 100 and cfg.model.name == "tiny"
    assert cfg.data.text_source == "caption" and cfg.data.pair_modalities and cfg.data.pair_by == "eye"
    assert (cfg.loss.image_text, cfg.loss.image_image, cfg.loss.mae) == (0.75, 0.75, 1.0)
    assert cfg.eval.sets[0].name == "heldout"


def test_real_data_experiments_share_one_recipe_at_equal_compute():
    central = compose_app("train", ["+experiment=real"])
    federated = compose_app("federation", ["+experiment=real_federation"])
    dp = compose_app("federation", ["+experiment=real_federation_dp"])
    assert central.model == federated.model and central.model.image.pretrained
    assert federated.federation.site_manifests == central.data.manifests and len(central.data.manifests) == 3
    assert 3 * federated.federation.rounds * federated.train.steps == central.train.steps
    assert central.loss.image_image == 0.0 and central.data.class_balance == 0.5  # ODIR: one modality
    assert dp.privacy.mode == "dp-sgd" and dp.loss.image_text_variant == "bank" and dp.data.class_balance == 0
    assert dp.model.image.trainable_stages == 0 and dp.train == federated.train


def test_manifest_data_group_requires_manifests():
    cfg = compose_app("train", ["data=manifests", "data.manifests=[a.csv,b.csv]", "eval=none"])
    assert cfg.data.manifests == ["a.csv", "b.csv"] and not cfg.phantom.ensure


def test_eval_app_composes():
    cfg = compose_app("eval", ["checkpoint=runs/x/checkpoint"])
    assert isinstance(cfg, EvalAppConfig) and cfg.eval.sets[0].name == "heldout"


def test_unknown_key_is_named():
    with pytest.raises(ConfigCompositionException) as info:
        compose_app("train", ["model.image.widht=10"])
    assert "widht" in str(info.value.__cause__ or info.value)


def test_wrong_type_is_named():
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as info:
        compose_app("train", ["train.steps=many"])
    assert "steps" in str(info.value.__cause__ or info.value)


@pytest.mark.parametrize("model", ["small", "base"])
def test_larger_presets_build(model):
    cfg = compose_app("train", [f"model={model}"])
    n = sum(p.numel() for p in build_model(cfg.model, pretrained=False).visual.parameters())
    assert n > (20e6 if model == "base" else 5e6)


STRATEGIES = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedtrimmedavg", "fedmedian", "krum"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_composes_and_builds(strategy):
    from server.strategy_registry import build_strategy
    from shared_model.config import FederationAppConfig

    cfg = compose_app("federation", [f"strategy={strategy}", "federation.min_sites=3"])
    assert isinstance(cfg, FederationAppConfig) and cfg.strategy.name == strategy
    built = build_strategy(cfg.strategy, cfg.federation)
    assert built.min_train_nodes == 3
    assert cfg.federation.sites == cfg.phantom.sites  # one simulated site per phantom site by default


def test_federated_demo_experiment():
    cfg = compose_app("federation", ["+experiment=federated_demo"])
    assert cfg.federation.rounds == 4 and cfg.train.steps == 25 and cfg.model.name == "tiny"
    assert cfg.strategy.name == "fedavg" and cfg.model.mae.enabled
    assert cfg.data.pair_modalities and (cfg.loss.image_text, cfg.loss.image_image, cfg.loss.mae) == (0.75, 0.75, 1.0)


def test_unknown_strategy_is_refused():
    from server.strategy_registry import build_strategy
    from shared_model.config import FederationConfig, StrategyConfig

    with pytest.raises(ValueError, match="fedsgd"):
        build_strategy(StrategyConfig(name="fedsgd"), FederationConfig())
