"""``retina-server``'s operator commands (``server/server_cli.py``): what they print when the
SuperLink is not there, and that the key and stop commands start without loading the model stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.flower_runtime import free_port
from server.server_cli import main

REPO = Path(__file__).resolve().parents[2]


def test_status_of_a_superlink_that_is_not_there_is_one_line_naming_it(capsys):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as stopped:
        main(["status", "--superlink", address, "--insecure"])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2
    assert f"error: the SuperLink at {address}: " in err and "refused" in err.lower()
    assert "Traceback" not in err and "Using SuperLink" not in out


OPERATOR = """
import sys
from server.server_cli import main
for argv, code in ((["pki", "init", "--dir", sys.argv[1], "--host", "localhost"], 0),
                   (["pki", "add-site", "hospital-a", "--dir", sys.argv[1]], 0),
                   (["stop", "--run-dir", sys.argv[2]], 2)):  # no run launched from that folder
    try:
        main(argv)
    except SystemExit as done:
        assert done.code == code, (argv, done.code)
print(sorted(name for name in ("torch", "timm", "pandas", "flwr") if name in sys.modules))
"""


def test_key_and_stop_commands_do_not_load_the_model_stack(tmp_path):
    """An operator's key commands, and ``stop`` (here refused), answer in a fraction of a second,
    not the seconds torch takes to load."""
    done = subprocess.run([sys.executable, "-c", OPERATOR, str(tmp_path / "pki"), str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no run was launched from this folder" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "pki" / "sites" / "hospital-a" / "site.key").is_file()
