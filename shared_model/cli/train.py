"""``retina-train``: centralized training + common evaluation, configured with Hydra.

Example: ``retina-train model=small train.steps=2000 run_dir=runs/small``.
"""

from __future__ import annotations

from rich.console import Console

from shared_model.cli.errors import user_errors
from shared_model.cli.overrides import parse_overrides
from shared_model.conf import compose_app


def main(argv: list[str] | None = None) -> None:
    """Compose the config, run training, print the evaluation table; config and input errors in one line."""
    overrides = parse_overrides("retina-train", "RetinaFL centralized training", "train", "model=small", argv)
    from shared_model.eval.report import render_table
    from shared_model.train.centralized import run_training

    with user_errors():
        cfg = compose_app("train", overrides, console_logging=True)
        results = run_training(cfg)
    Console().print(render_table(results, title=f"zero-shot evaluation — {cfg.run_dir}"))


if __name__ == "__main__":
    main()
