"""Who owns a run folder: at most one live run writes it, and at most one command launches or
follows it.

Two lock files, each held with ``flock`` for the lifetime of its holder (the kernel releases
it however the process ends, SIGKILL included) and naming the holder in JSON:

- ``RUN_DIR/launch.lock``: the command that launched the run (``retina-server run``,
  ``retina-sim``) — the run id, the SuperLink and how to reach it, the owner, its PID. It stays
  after the command ends, so ``retina-server stop --run-dir`` and the next launch know which run
  last owned the folder.
- ``RUN_DIR/run.lock``: the ServerApp of the run while it runs; a second ServerApp on the same
  folder (a run whose command was interrupted and then resumed, two launches racing) stops at
  start, before it writes anything.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

LAUNCH_LOCK = "launch.lock"
RUN_LOCK = "run.lock"


class RunFolderBusy(RuntimeError):
    """Another live run or command owns the run folder."""


@dataclass
class LaunchRecord:
    """What ``launch.lock`` says about the run that last owned the folder."""

    run_id: int | None
    superlink: str
    insecure: bool
    root_certificates: str | None
    owner: str
    pid: int
    started: str


def owner() -> str:
    """``user@host`` of this process."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _open_locked(path: Path) -> IO[str] | None:
    """``path`` opened and ``flock``-ed exclusively, or None when another process holds it."""
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 — held open for the lock's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _rewrite(handle: IO[str], payload: dict) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(payload, indent=1) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock file ``path``."""
    if not path.is_file():
        return False
    handle = _open_locked(path)
    if handle is None:
        return True
    handle.close()
    return False


def read_launch(run_dir: Path) -> LaunchRecord | None:
    """The run that last owned ``run_dir`` according to its ``launch.lock`` (None: never launched)."""
    data = _read(run_dir / LAUNCH_LOCK)
    if not data:
        return None
    fields = LaunchRecord.__dataclass_fields__
    return LaunchRecord(**{k: data.get(k) for k in fields})


def describe(record: LaunchRecord) -> str:
    """``run N on HOST:PORT, launched by user@host (pid P) at TIME``."""
    run = f"run {record.run_id}" if record.run_id is not None else "a run being submitted"
    return f"{run} on {record.superlink}, launched by {record.owner} (pid {record.pid}) at {record.started}"


class LaunchLock:
    """The launching command's hold on ``RUN_DIR/launch.lock`` (see module doc)."""

    def __init__(self, run_dir: Path, handle: IO[str], record: LaunchRecord):
        self.run_dir, self._handle, self.record = run_dir, handle, record

    @classmethod
    def acquire(cls, run_dir: Path, superlink: str, insecure: bool, root_certificates: str | None) -> LaunchLock:
        """Take the folder for a new launch; RunFolderBusy when another command holds it."""
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _open_locked(run_dir / LAUNCH_LOCK)
        if handle is None:
            previous = read_launch(run_dir)
            who = describe(previous) if previous else "another command"
            raise RunFolderBusy(f"{run_dir} is in use by {who}: a second launch on this folder is refused. "
                                f"Stop that run with: retina-server stop --run-dir {run_dir}")
        record = LaunchRecord(None, superlink, insecure, root_certificates, owner(), os.getpid(),
                              time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        return cls(run_dir, handle, record)

    def submitted(self, run_id: int) -> None:
        """Record the submitted run's id (``retina-server stop`` and the next launch read it)."""
        self.record.run_id = run_id
        _rewrite(self._handle, asdict(self.record))

    def release(self) -> None:
        """Let go of the folder (the record stays in the file)."""
        self._handle.close()


class RunLock:
    """The ServerApp's hold on ``RUN_DIR/run.lock`` while the run writes the folder."""

    def __init__(self, run_dir: Path, run_id: int | None):
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _open_locked(run_dir / RUN_LOCK)
        if handle is None:
            holder = _read(run_dir / RUN_LOCK)
            raise RunFolderBusy(f"{run_dir} is being written by run {holder.get('run_id')} (pid {holder.get('pid')} "
                                f"on {holder.get('host')}); this run stops before writing anything. Stop the other "
                                f"run with: retina-server stop --run-dir {run_dir}")
        _rewrite(handle, {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()})
        self._handle = handle

    def release(self) -> None:
        """Let go of the folder."""
        self._handle.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def wait_until_released(run_dir: Path, timeout: float, poll: float = 0.5) -> bool:
    """Wait for the run's ServerApp to let go of the folder; False if it still holds it after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while is_held(run_dir / RUN_LOCK):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
