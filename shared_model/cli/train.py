"""``retina-train``: centralized training + common evaluation, configured with Hydra.

Example: ``retina-train model=small train.steps=2000 run_dir=runs/small``.
"""

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from shared_model.cli.errors import hydra_cli, user_errors
from shared_model.conf import register_configs

register_configs()


@hydra.main(config_path="pkg://shared_model.conf", config_name="train", version_base="1.3")
def run(cfg: DictConfig) -> None:
    """Compose the config, run training, print the evaluation table."""
    from shared_model.eval.report import render_table
    from shared_model.train.centralized import run_training

    with user_errors():
        results = run_training(OmegaConf.to_object(cfg))
    Console().print(render_table(results, title=f"zero-shot evaluation — {cfg.run_dir}"))


def main() -> None:
    """The console script: :func:`run`, with config errors reported in one line."""
    hydra_cli(run)


if __name__ == "__main__":
    main()
