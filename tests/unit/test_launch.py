"""What ``retina-server run`` does when its run fails or it is interrupted
(``server/launch.py``), with Flower's calls replaced: a failed run (a SuperLink restart among
them) ends with the last complete round and the exact resume command; Ctrl-C / SIGTERM stops the
run on the SuperLink, unless the command detaches; a folder whose run is still alive on the
SuperLink is refused."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

import server.launch as launch_module
from server.flower_runtime import Connection, FlowerRunError
from server.launch import Launch, launch_run
from server.round_checkpoint import ServerState, save_round
from server.run_lock import LaunchLock, RunFolderBusy
from shared_model.conf import compose_app

RESUME = "retina-server run --superlink link:9092 --root-certificates ca.crt --resume RUN"


@pytest.fixture
def flower(monkeypatch):
    """Flower's side, scripted: ``calls`` records what the launcher asked for."""
    calls = {"stopped": [], "status": "running"}

    @contextmanager
    def client(connection, env):
        yield "client"

    monkeypatch.setattr(launch_module, "submit_run", lambda *a, **k: 17)
    monkeypatch.setattr(launch_module, "run_logs", lambda *a, **k: "logs")
    monkeypatch.setattr(launch_module, "control_client", client)
    monkeypatch.setattr(launch_module, "stop_run", lambda c, run_id: calls["stopped"].append(run_id) or True)
    monkeypatch.setattr(launch_module, "run_status", lambda c, run_id: (calls["status"], ""))
    monkeypatch.setattr(launch_module, "wait_until_released", lambda run_dir, timeout: True)
    return calls


def _cfg(run_dir: Path):
    return compose_app("federation", [f"run_dir={run_dir}", "eval=none"])


def _one_round_done(run_dir: Path) -> None:
    def write(folder: Path, server_round: int) -> list[str]:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        return ["model.safetensors"]

    save_round(run_dir, write, {}, ServerState(1, [{"round": 1}]))


def _launch(**kw) -> Launch:
    return Launch(Connection("coordinator", "link:9092", root_certificates="ca.crt"), RESUME, **kw)


def test_a_failed_run_says_where_the_folder_stands_and_how_to_resume(tmp_path, monkeypatch, flower):
    def restart(*a, **k):
        _one_round_done(tmp_path / "run")
        raise FlowerRunError("run 17 finished:failed: No heartbeat received from the task")

    monkeypatch.setattr(launch_module, "wait_for_run", restart)
    with pytest.raises(FlowerRunError) as failed:
        launch_run(_cfg(tmp_path / "run"), _launch())
    message = str(failed.value)
    assert message.startswith("run 17 finished:failed: No heartbeat received from the task\n")
    assert "rounds up to 1 are complete (checkpoints/round_0001)" in message
    assert message.endswith(f"Continue with:\n  {RESUME}")


@pytest.mark.parametrize("signal_kind", ["ctrl-c", "sigterm"])
def test_an_interrupt_without_a_terminal_stops_the_run_on_the_superlink(tmp_path, monkeypatch, flower, capsys,
                                                                       signal_kind):
    def interrupted(*a, **k):
        raise KeyboardInterrupt() if signal_kind == "ctrl-c" else launch_module._Terminated()

    monkeypatch.setattr(launch_module, "wait_for_run", interrupted)
    with pytest.raises(SystemExit) as stopped:
        launch_run(_cfg(tmp_path / "run"), _launch())
    assert stopped.value.code == 130 and flower["stopped"] == [17]
    out = capsys.readouterr().out.replace("\n", " ")
    assert "run 17 stopped." in out and "no round is complete yet" in out and RESUME in out


def test_a_detached_command_leaves_the_run_going(tmp_path, monkeypatch, flower, capsys):
    monkeypatch.setattr(launch_module, "wait_for_run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as left:
        launch_run(_cfg(tmp_path / "run"), _launch(detach=True))
    assert left.value.code == 0 and flower["stopped"] == []
    assert "detached: run 17 continues on link:9092" in capsys.readouterr().out.replace("\n", " ")


def test_a_folder_whose_run_is_alive_on_the_superlink_is_refused_before_anything_is_written(tmp_path, monkeypatch,
                                                                                             flower):
    earlier = LaunchLock.acquire(tmp_path / "run", "link:9092", False, "ca.crt")
    earlier.submitted(16)
    earlier.release()  # the command was killed; its run goes on
    with pytest.raises(RunFolderBusy, match=r"run 16 on link:9092, launched by .* is still running on the SuperLink"):
        launch_run(_cfg(tmp_path / "run"), _launch())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["flwr-home", "launch.lock"]
    flower["status"] = "finished:stopped"  # once it has ended, the folder can be resumed
    monkeypatch.setattr(launch_module, "wait_for_run", lambda *a, **k: None)
    assert launch_run(_cfg(tmp_path / "run"), _launch()) == []


def test_a_resume_says_on_the_console_which_round_it_continues_and_what_it_skips(tmp_path, monkeypatch, flower,
                                                                                capsys):
    run_dir = tmp_path / "run"
    _one_round_done(run_dir)
    second = run_dir / "checkpoints" / "round_0002"
    second.mkdir()
    (second / "server_state.json").write_text("{truncated")
    monkeypatch.setattr(launch_module, "wait_for_run", lambda *a, **k: None)
    launch_run(compose_app("federation", [f"run_dir={run_dir}", "eval=none", "resume=true"]), _launch())
    out = capsys.readouterr().out.replace("\n", " ")
    assert "warning: skipping corrupt round checkpoint:" in out and "round_0002/server_state.json: unreadable" in out
    assert f"resuming {run_dir} after round 1" in out


def test_half_written_round_folders_are_removed_and_complete_ones_kept(tmp_path):
    from server.round_checkpoint import latest_round, remove_partial_rounds

    _one_round_done(tmp_path)
    partial = tmp_path / "checkpoints" / "round_0002.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert remove_partial_rounds(tmp_path) == [partial] and not partial.exists()
    assert latest_round(tmp_path)[1].round == 1


@pytest.mark.parametrize("answer, code, stopped", [("detach", 0, []), ("stop", 130, [17])])
def test_ctrl_c_at_a_terminal_asks_whether_to_stop_or_detach(tmp_path, monkeypatch, flower, answer, code, stopped):
    import rich.prompt

    asked = []
    monkeypatch.setattr(launch_module.sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(rich.prompt.Prompt, "ask", lambda question, **k: asked.append(question) or answer)
    monkeypatch.setattr(launch_module, "wait_for_run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as ended:
        launch_run(_cfg(tmp_path / "run"), _launch())
    assert ended.value.code == code and flower["stopped"] == stopped
    assert asked == ["\nStop the run on the SuperLink, or detach and let it continue?"]
