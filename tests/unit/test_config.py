"""Hydra composition: every config group composes, presets have the documented sizes, and
unknown keys or wrong types fail naming the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from shared_model.conf import compose_app
from shared_model.config import EvalAppConfig, TrainAppConfig
from shared_model.model import build_model

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
    from server.aggregation import build_strategy
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
    from server.aggregation import build_strategy
    from shared_model.config import FederationConfig, StrategyConfig

    with pytest.raises(ValueError, match="fedsgd"):
        build_strategy(StrategyConfig(name="fedsgd"), FederationConfig())


@pytest.mark.parametrize("app, override, message", [
    ("federation", "federation.rounds=-1", "federation.rounds=-1 is out of range: it must be >= 1"),
    ("federation", "federation.connect_timeout=0", "federation.connect_timeout=0.0 is out of range: it must be > 0"),
    ("federation", "federation.round_retries=-1", "federation.round_retries=-1 is out of range: it must be >= 0"),
    ("federation", "strategy.fraction_train=0", "strategy.fraction_train=0.0 is out of range: it must be in (0, 1]"),
    ("federation", "strategy.fraction_evaluate=1.5",
     "strategy.fraction_evaluate=1.5 is out of range: it must be in [0, 1]"),
    ("federation", "secagg.clipping_range=0", "secagg.clipping_range=0.0 is out of range: it must be > 0"),
    ("train", "train.batch_size=0", "train.batch_size=0 is out of range: it must be >= 1"),
    ("train", "train.max_seconds=-5", "train.max_seconds=-5.0 is out of range: it must be > 0"),
    ("train", "train.lr=0", "train.lr=0.0 is out of range: it must be > 0"),
    ("train", "train.steps=-1", "train.steps=-1 is out of range: it must be >= 0"),
    ("train", "model.image.image_size=0", "model.image.image_size=0 is out of range: it must be >= 1"),
    ("train", "phantom.sites=0", "phantom.sites=0 is out of range: it must be >= 1"),
    ("synth", "sample.n=0", "sample.n=0 is out of range: it must be >= 1"),
])
def test_out_of_range_values_are_refused_naming_the_dotted_key(app, override, message):
    with pytest.raises(ValueError) as info:
        compose_app(app, [override])
    assert str(info.value) == message


def test_zero_steps_and_unset_optional_values_are_accepted():
    cfg = compose_app("train", ["train.steps=0", "train.max_seconds=null", "train.checkpoint_every=0"])
    assert cfg.train.steps == 0 and cfg.train.max_seconds is None  # 0 steps: evaluate the untrained model


CONF = Path(__file__).resolve().parents[2] / "shared_model" / "conf"


@pytest.mark.parametrize("group, option", sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml")))
def test_every_packaged_group_option_composes(group, option):
    app = "federation" if group in ("federation", "strategy", "secagg") or "federat" in option else "train"
    prefix = "+" if group == "experiment" else ""
    assert compose_app(app, [f"{prefix}{group}={option}"]) is not None


@pytest.mark.parametrize("override, line", [
    ("train.stepz=3", "train.stepz: Key 'stepz' not in 'TrainConfig' "
                      "(Could not override 'train.stepz'; To append to your config use +train.stepz=3)"),
    ("train.steps=abc", "train.steps: Value 'abc' of type 'str' could not be converted to Integer "
                        "(Error merging override train.steps=abc)"),
    ("model=nope", "In 'train': Could not find 'model/nope'; "
                   "available options: base, efficientnet_lite0, resnet50, small, tiny"),
])
def test_composition_errors_fold_into_one_line_naming_the_key(override, line):
    from shared_model.cli.errors import error_line

    with pytest.raises(ConfigCompositionException) as info:
        compose_app("train", [override])
    assert error_line(info.value) == line


BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command, line", [
    (["retina-train", "train.stepz=1"], "error: train.stepz: Key 'stepz' not in 'TrainConfig' "
                                        "(Could not override 'train.stepz'; "
                                        "To append to your config use +train.stepz=1)"),
    (["retina-train", "model=nope"], "error: In 'train': Could not find 'model/nope'; "
                                     "available options: base, efficientnet_lite0, resnet50, small, tiny"),
    (["retina-sim", "federation.rounds=-1"], "error: federation.rounds=-1 is out of range: it must be >= 1"),
    (["retina-server", "run", "--superlink", "127.0.0.1:9", "--insecure", "train.stepz=3"],
     "error: train.stepz: Key 'stepz' not in 'TrainConfig' "
     "(Could not override 'train.stepz'; To append to your config use +train.stepz=3)"),
    (["retina-synth", "train", "--manifest", "site.csv", "train.steps=0"],
     "error: train.steps=0 is out of range: it must be >= 1"),
])
def test_console_scripts_report_config_errors_in_one_line(command, line, tmp_path):
    """Each fails at composition, before any data or training: one line on stderr, status 2."""
    result = subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert (result.returncode, result.stderr.strip()) == (2, line)


def _saved(tmp_path: Path, app: str, overrides: list[str]) -> Path:
    """A run folder's ``config.yaml``, written as the runs write it."""
    from omegaconf import OmegaConf

    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(OmegaConf.structured(compose_app(app, overrides))))
    return saved


def test_a_saved_config_is_the_base_of_its_overrides(tmp_path):
    """``--resume`` / ``--generator``: the saved values, not the packaged defaults, then the overrides."""
    saved = _saved(tmp_path, "federation", ["model=small", "strategy=fedprox", "federation.rounds=7"])
    cfg = compose_app("federation", ["federation.rounds=9"], saved=saved)
    assert (cfg.model.name, cfg.strategy.name, cfg.federation.rounds) == ("small", "fedprox", 9)
    assert cfg == compose_app("federation", ["model=small", "strategy=fedprox", "federation.rounds=9"])


@pytest.mark.parametrize("override, line", [
    ("train.steps=abc", "train.steps: Value 'abc' of type 'str' could not be converted to Integer "
                        "(Error merging override train.steps=abc)"),
    ("strategy=fedavg", "Could not override 'strategy'. No match in the defaults list; "
                        "To append to your default list use +strategy=fedavg"),
])
def test_an_override_of_a_saved_config_fails_as_over_the_packaged_one(override, line, tmp_path, capsys):
    """Bad values fail with the same line as on a fresh composition; a group option is refused
    rather than silently lost under the saved values."""
    from shared_model.cli.errors import user_errors

    with pytest.raises(SystemExit) as info, user_errors():
        compose_app("federation", [override], saved=_saved(tmp_path, "federation", []))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {line}"


def test_a_saved_config_with_a_key_its_schema_lacks_is_refused_naming_the_key(tmp_path):
    from shared_model.cli.errors import error_line

    with pytest.raises(ConfigCompositionException) as info:
        compose_app("synth", [], saved=_saved(tmp_path, "federation", []))  # a federated run is no generator folder
    assert error_line(info.value) == ("phantom: Key 'phantom' not in 'SynthAppConfig' "
                                      "(In 'saved_synth': ConfigKeyError raised while composing config)")
