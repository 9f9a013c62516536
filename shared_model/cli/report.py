"""``retina-report RUN_DIR [RUN_DIR ...]``: (re)write ``report.html`` of run folders, e.g. a
deployed coordinator's run folder while it runs, or a folder copied from another machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from shared_model.cli.errors import user_errors


def main(argv: list[str] | None = None) -> None:
    """Write each folder's report and print its path."""
    parser = argparse.ArgumentParser(prog="retina-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path,
                        help="run folders (centralized, federated, generator, corpus)")
    args = parser.parse_args(argv)
    from shared_model.reporting.run_report import write_run_report

    with user_errors():
        for run_dir in args.run_dirs:
            if not run_dir.is_dir():
                raise FileNotFoundError(f"{run_dir}: no such run folder")
            Console().print(f"{write_run_report(run_dir)}", highlight=False)


if __name__ == "__main__":
    main()
