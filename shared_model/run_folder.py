"""The check a run folder passes before any training: it can be written, and its filesystem has
room for what the run will write, so a read-only or full disk is refused at the start instead of
after the training it could not save."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MARGIN_BYTES = 64 * 2 ** 20  # metrics, reports, evaluation files and the config beside the checkpoints


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:,.0f} MiB"


def check_run_folder(folder: str | Path, needed_bytes: int) -> Path:
    """Create ``folder``, write and remove a probe file in it, and require ``needed_bytes`` (what
    the caller's checkpoints take at their peak) plus a margin free on its filesystem; raise
    ValueError naming the folder and the problem otherwise. Returns the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"run folder {folder}: cannot be written ({exc}); fix its permissions or set run_dir to "
                         "a writable folder") from exc
    free, needed = shutil.disk_usage(folder).free, needed_bytes + MARGIN_BYTES
    if free < needed:
        raise ValueError(f"run folder {folder}: {_mib(free)} free on its filesystem, the run needs about "
                         f"{_mib(needed)} for its checkpoints and reports; free some space or set run_dir to a "
                         "folder on another disk")
    return folder
