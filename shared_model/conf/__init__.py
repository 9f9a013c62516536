"""Packaged Hydra configuration (found with ``pkg://shared_model.conf``) and its typed schemas.

``register_configs`` stores the dataclass schemas of :mod:`shared_model.config` so every YAML
group file is merged into a typed node: unknown keys and wrong types fail at composition.
"""

from hydra.core.config_store import ConfigStore

from shared_model.config import EvalAppConfig, FederationAppConfig, SynthAppConfig, TrainAppConfig

CONFIG_MODULE = "shared_model.conf"


def register_configs() -> None:
    """Register the application schemas (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainAppConfig)
    store.store(name="eval_schema", node=EvalAppConfig)
    store.store(name="federation_schema", node=FederationAppConfig)
    store.store(name="synth_schema", node=SynthAppConfig)


def compose_app(config_name: str, overrides: list[str]):
    """Compose a packaged config (``train``, ``federation``, ``synth``, ``eval``) with Hydra
    ``overrides`` into its typed dataclass, as the console scripts do (for benchmarks and tests)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return OmegaConf.to_object(compose(config_name, overrides=overrides))
