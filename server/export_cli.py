"""``retina-export RUN_DIR --out FOLDER [--round N]``: a run's model as a stand-alone checkpoint
with its model card, for people who evaluate or fine-tune it without the run folder
(``retina-eval checkpoint=FOLDER ...``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from shared_model.cli.errors import user_errors


def main(argv: list[str] | None = None) -> None:
    """Export and print what was written."""
    parser = argparse.ArgumentParser(prog="retina-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a retina-train, retina-sim or retina-server run folder")
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) folder to write")
    parser.add_argument("--round", type=int, dest="round_number",
                        help="federated runs: this kept round (default: last)")
    args = parser.parse_args(argv)
    from server.model_export import export_run

    with user_errors():
        out = export_run(args.run_dir, args.out, args.round_number)
    Console().print(f"exported {args.run_dir} to {out} (model.safetensors, config.json, MODEL_CARD.md)",
                    highlight=False)


if __name__ == "__main__":
    main()
