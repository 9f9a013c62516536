"""The command line of the console scripts configured by Hydra overrides alone."""

from __future__ import annotations

import argparse


def parse_overrides(prog: str, description: str, config: str, example: str, argv: list[str] | None) -> list[str]:
    """The Hydra overrides (``key=value``, ``group=option``, ``+experiment=name``) of ``config``
    given on ``prog``'s command line; ``--help`` describes them with ``example``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("overrides", nargs="*", help=f"Hydra overrides of the {config} config, e.g. {example}")
    return parser.parse_args(argv).overrides
