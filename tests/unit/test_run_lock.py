"""Ownership of a run folder (``server/run_lock.py``): one launching command and one live
ServerApp per folder, released however the holder ends; and stopping a whole process tree
(``server/flower_runtime.py:stop_process_tree``), as ``retina-sim`` does after Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.flower_runtime import is_running, process_state, process_tree, stop_process_tree
from server.run_lock import LaunchLock, RunFolderBusy, RunLock, is_held, read_launch, wait_until_released

HOLD = """
import sys, time
from pathlib import Path
from server.run_lock import RunLock
lock = RunLock(Path(sys.argv[1]), 7)
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_launch_on_a_folder_is_refused_naming_the_first(tmp_path):
    first = LaunchLock.acquire(tmp_path, "coordinator:9092", False, "/pki/ca.crt")
    first.submitted(41)
    with pytest.raises(RunFolderBusy, match=r"in use by run 41 on coordinator:9092, launched by .* \(pid \d+\)"):
        LaunchLock.acquire(tmp_path, "coordinator:9092", False, None)
    first.release()
    record = read_launch(tmp_path)  # the record outlives the command: stop and the next launch read it
    assert (record.run_id, record.superlink, record.root_certificates) == (41, "coordinator:9092", "/pki/ca.crt")
    LaunchLock.acquire(tmp_path, "coordinator:9092", False, None).release()


def test_a_second_serverapp_stops_before_writing(tmp_path):
    with RunLock(tmp_path, 5):
        assert is_held(tmp_path / "run.lock")
        with pytest.raises(RunFolderBusy, match="being written by run 5"):
            RunLock(tmp_path, 6)
    assert not is_held(tmp_path / "run.lock")


def test_the_lock_of_a_killed_serverapp_is_released(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not wait_until_released(tmp_path, timeout=0.5)
        with pytest.raises(RunFolderBusy, match="being written by run 7"):
            RunLock(tmp_path, 8)
        os.kill(holder.pid, signal.SIGKILL)
        assert wait_until_released(tmp_path, timeout=10)
        RunLock(tmp_path, 8).release()
    finally:
        holder.kill()
        holder.wait()


WRITER = """
import pathlib, sys, time
while True:
    pathlib.Path(sys.argv[1]).write_text(str(time.time()))
    time.sleep(0.1)
"""
MIDDLE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])
time.sleep(600)
"""


def _tree(tmp_path: Path, beat: Path) -> subprocess.Popen:
    """root -> a child in its own session (as Flower's SuperExec is) -> a grandchild writing ``beat``."""
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "middle.py").write_text(MIDDLE)
    root = ("import subprocess, sys, time; subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]], "
            "start_new_session=True); time.sleep(600)")
    return subprocess.Popen([sys.executable, "-c", root, str(tmp_path / "middle.py"), str(tmp_path / "writer.py"),
                             str(beat)], start_new_session=True)


@pytest.mark.parametrize("at_once", [False, True])
def test_stopping_a_process_tree_stops_every_descendant(tmp_path, at_once):
    beat = tmp_path / "beat"
    root = _tree(tmp_path, beat)
    try:
        deadline = time.monotonic() + 30
        while not beat.exists():
            assert time.monotonic() < deadline, "the grandchild never started"
            time.sleep(0.1)
        tree = process_tree([root.pid])
        assert len(tree) == 3  # root, its child in another session, the grandchild
    except AssertionError:
        root.kill()
        raise
    stop_process_tree([root.pid], at_once=at_once, timeout=5)
    root.wait(timeout=10)
    last = beat.read_text()
    time.sleep(0.5)
    assert beat.read_text() == last  # nothing writes any more
    assert not [pid for pid in tree if is_running(pid)]


LEADER_GONE = """
import ctypes, signal, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
threading.Thread(target=time.sleep, args=(600,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_child_whose_main_thread_ended_is_stopped_and_reaped():
    """The kernel shows a process whose main thread has ended as a zombie while its other threads
    still run (or are still exiting: the SuperLink CI found unreaped): stopping it waits for it to be
    reaped, and kills it when SIGTERM does not end it."""
    child = subprocess.Popen([sys.executable, "-c", LEADER_GONE])
    try:
        deadline = time.monotonic() + 30
        while process_state(child.pid) != "Z":
            assert time.monotonic() < deadline and child.poll() is None, "the main thread never ended"
            time.sleep(0.05)
        assert is_running(child.pid)  # its other thread
        stop_process_tree([child.pid], timeout=1)
        assert process_state(child.pid) is None  # reaped, not left a zombie still running threads
    finally:
        child.kill()
        child.wait()
