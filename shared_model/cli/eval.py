"""``retina-eval``: the common evaluator on a checkpoint folder.

Example: ``retina-eval checkpoint=runs/train/checkpoint eval=real out_dir=runs/eval-real``.
"""

from __future__ import annotations

from rich.console import Console

from shared_model.cli.errors import user_errors
from shared_model.cli.overrides import parse_overrides
from shared_model.conf import compose_app


def main(argv: list[str] | None = None) -> None:
    """Compose the config, evaluate, print the table; config and input errors in one line."""
    overrides = parse_overrides("retina-eval", "RetinaFL common evaluator", "eval", "checkpoint=DIR", argv)
    from shared_model.eval.evaluate import run_evaluation
    from shared_model.eval.report import render_table

    with user_errors():
        cfg = compose_app("eval", overrides, console_logging=True)
        results = run_evaluation(cfg)
    Console().print(render_table(results, title=f"evaluation — {cfg.checkpoint}"))


if __name__ == "__main__":
    main()
