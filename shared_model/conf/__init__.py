"""Packaged Hydra configuration (found with ``pkg://shared_model.conf``), its typed schemas, and
:func:`compose_app`, the one way a command, benchmark or test builds its typed config.

``register_configs`` stores the dataclass schemas of :mod:`shared_model.config` so every YAML
group file is merged into a typed node: unknown keys and wrong types fail at composition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from shared_model.config import EvalAppConfig, FederationAppConfig, SynthAppConfig, TrainAppConfig

CONFIG_MODULE = "shared_model.conf"
JOB_LOGGING = "retina"  # hydra/job_logging/retina.yaml: the console of the retina-* commands


def register_configs() -> None:
    """Register the application schemas (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainAppConfig)
    store.store(name="eval_schema", node=EvalAppConfig)
    store.store(name="federation_schema", node=FederationAppConfig)
    store.store(name="synth_schema", node=SynthAppConfig)


def _store_saved(config_name: str, saved: Path) -> str:
    """Store a run folder's saved config as a primary config typed by ``config_name``'s schema;
    returns its name. No config group is in its defaults list, so an override choosing an option
    (``strategy=fedprox``) is refused instead of lost under the saved values (``+strategy=...`` wins)."""
    from omegaconf import OmegaConf

    name = f"saved_{config_name}"
    defaults = [f"{config_name}_schema", {"override hydra/job_logging": JOB_LOGGING}, "_self_"]
    values = OmegaConf.to_container(OmegaConf.load(saved))
    ConfigStore.instance().store(name=name, node={"defaults": defaults, **values})
    return name


def compose_app(config_name: str, overrides: list[str], *, config_dir: Path | None = None, saved: Path | None = None,
                console_logging: bool = False) -> Any:
    """The typed config (:mod:`shared_model.config`) of the packaged app config ``config_name``
    (``train``, ``federation``, ``synth``, ``eval``) with Hydra ``overrides``.

    ``config_dir``: a folder of the user's own config groups, searched as well
    (``DIR/experiment/NAME.yaml`` is selected by ``+experiment=NAME``). ``saved``: a run folder's
    ``config.yaml`` (a resumed run, a trained generator) stands in for the packaged defaults, the
    overrides applied on top of its values. ``console_logging``: configure Python's logging as the
    config's ``hydra/job_logging`` says (``hydra.verbose=true`` or ``=LOGGER`` turns DEBUG on).
    Composition errors (unknown key or option, wrong type) raise Hydra's exceptions and range
    errors ``ValueError``, naming the dotted key; ``shared_model.cli.errors.user_errors`` prints
    either as one line."""
    from hydra import compose, initialize_config_module
    from hydra.core.utils import configure_log
    from omegaconf import OmegaConf, open_dict

    register_configs()
    if config_dir is not None:
        if not config_dir.is_dir():
            raise FileNotFoundError(f"config folder {config_dir}: no such folder")
        overrides = [f"hydra.searchpath=[file://{config_dir.resolve()}]", *overrides]
    primary = config_name if saved is None else _store_saved(config_name, saved)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(primary, overrides=overrides, return_hydra_config=console_logging)
    if console_logging:
        with open_dict(cfg):
            hydra_cfg = cfg.pop("hydra")
        configure_log(hydra_cfg.job_logging, hydra_cfg.verbose)
    return OmegaConf.to_object(cfg)


def write_resolved_config(cfg, run_dir: Path) -> None:
    """Save the fully resolved configuration beside the run's outputs (what ``compose_app(saved=)``
    composes again)."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
