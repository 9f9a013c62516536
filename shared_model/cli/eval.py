"""``retina-eval``: the common evaluator on a checkpoint folder.

Example: ``retina-eval checkpoint=runs/train/checkpoint eval=real out_dir=runs/eval-real``.
"""

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from shared_model.cli.errors import hydra_cli, user_errors
from shared_model.conf import register_configs

register_configs()


@hydra.main(config_path="pkg://shared_model.conf", config_name="eval", version_base="1.3")
def run(cfg: DictConfig) -> None:
    """Compose the config, evaluate, print the table."""
    from shared_model.eval.evaluate import run_evaluation
    from shared_model.eval.report import render_table

    with user_errors():
        results = run_evaluation(OmegaConf.to_object(cfg))
    Console().print(render_table(results, title=f"evaluation — {cfg.checkpoint}"))


def main() -> None:
    """The console script: :func:`run`, with config errors reported in one line."""
    hydra_cli(run)


if __name__ == "__main__":
    main()
