"""Turning the errors a user can fix (bad manifest, image, checkpoint or config value) into one
clear line on stderr and exit status 2, instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _folded(text: str) -> str:
    """A multi-line report as one line (Hydra's search-path listing dropped)."""
    text = text.split("Config search path:")[0]
    return "; ".join(line.strip().rstrip(".") for line in text.splitlines() if line.strip())


def error_line(exc: BaseException) -> str:
    """The one-line message of a user error. OmegaConf's report (message, then ``full_key`` and
    type lines) becomes ``KEY: message``; Hydra's (a failed override with OmegaConf's error as its
    cause, a config file's bad key with it as its context, an unknown config group option with the
    available ones) is folded around it."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        return f"{key}: {_first_line(exc)}" if key else _first_line(exc)
    if isinstance(exc, MissingConfigException) and exc.options:
        return f"{_first_line(exc)}; available options: {', '.join(exc.options)}"
    if isinstance(exc, HydraException):
        if exc.__cause__:
            return f"{error_line(exc.__cause__)} ({_folded(str(exc))})"
        if isinstance(exc.__context__, OmegaConfBaseException):  # a bad key or value in a config file itself
            return f"{error_line(exc.__context__)} ({_first_line(exc).rstrip(':')})"
        return _folded(str(exc))
    return str(exc)


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Bad-input error types of the libraries and of our readers; imported only once an error is
    raised that no built-in type matches, so that a command which never loads a model or a
    manifest (``retina-server pki``, ``status``, ``stop``) starts in a fraction of a second."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from shared_model.data.manifest import ManifestError
    from shared_model.data.readers import ImageReadError
    from shared_model.model.state_dicts import CheckpointError

    return ManifestError, ImageReadError, CheckpointError, HydraException, OmegaConfBaseException


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Exit with status 2 and the error's message for input problems, config composition errors
    (Hydra, OmegaConf) included (and the ``extra`` error types a command names, e.g. a failed
    federated run); let real bugs raise."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, (*extra, FileNotFoundError, FileExistsError, ValueError)) \
                and not isinstance(exc, _input_error_types()):
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(error_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
