"""The run config Flower carries: every leaf of the typed config survives the round trip,
unknown keys and bad values are refused, and the generated Flower app lists exactly those keys."""

import tomllib

import pytest

from server.flower_app_folder import write_flower_app
from shared_model.conf import compose_app
from shared_model.config import FederationAppConfig
from shared_model.run_config import flatten_config, unflatten_config


def test_round_trip_keeps_every_value_including_lists_and_none():
    cfg = compose_app("federation", ["federation.site_manifests=[/a/x.csv,/b/y.csv]", "train.max_seconds=null"])
    flat = flatten_config(cfg)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["train.lr"] == cfg.train.lr and "model.image.width" in flat
    assert unflatten_config(flat, FederationAppConfig) == cfg


def test_unknown_key_and_wrong_type_are_refused():
    flat = flatten_config(FederationAppConfig())
    with pytest.raises(Exception, match="no_such_key"):
        unflatten_config({**flat, "train.no_such_key": 1}, FederationAppConfig)
    with pytest.raises(Exception, match="rounds"):
        unflatten_config({**flat, "federation.rounds": "many"}, FederationAppConfig)
    with pytest.raises(ValueError, match="eval.kshot"):
        unflatten_config({**flat, "eval.kshot": "json:[1,"}, FederationAppConfig)


def test_flower_app_lists_exactly_the_schema_keys(tmp_path):
    cfg = compose_app("federation", ["strategy=fedprox", "federation.rounds=5"])
    app = write_flower_app(tmp_path / "app", cfg)
    manifest = tomllib.loads((app / "pyproject.toml").read_text())
    config = manifest["tool"]["flwr"]["app"]["config"]
    assert set(config) == set(flatten_config(FederationAppConfig()))
    assert unflatten_config(config, FederationAppConfig) == cfg
    assert manifest["tool"]["flwr"]["app"]["components"] == {"serverapp": "server.server_app:app",
                                                             "clientapp": "client.client_app:app"}


def test_out_of_range_value_is_refused_when_the_server_app_rebuilds_the_config():
    flat = flatten_config(FederationAppConfig())
    with pytest.raises(ValueError) as info:
        unflatten_config({**flat, "federation.round_timeout": -1.0}, FederationAppConfig)
    assert str(info.value) == "federation.round_timeout=-1.0 is out of range: it must be > 0"
