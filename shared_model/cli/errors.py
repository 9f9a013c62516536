"""Turning the errors a user can fix (bad manifest, image, checkpoint or config value) into one
clear line on stderr and exit status 2, instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Exit with status 2 and the error's message for input problems (and the ``extra`` error
    types a command names, e.g. a failed federated run); let real bugs raise."""
    from shared_model.data.manifest import ManifestError
    from shared_model.data.readers import ImageReadError
    from shared_model.model.state_dicts import CheckpointError

    try:
        yield
    except (ManifestError, ImageReadError, CheckpointError, FileNotFoundError, FileExistsError, ValueError,
            *extra) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)

