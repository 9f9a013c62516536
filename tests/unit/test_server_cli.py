"""``retina-server``'s operator commands (``server/server_cli.py``): what they print when the
SuperLink is not there, and that the PKI commands start without loading the model stack."""

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


PKI_ONLY = """
import sys
from server.server_cli import main
try:
    main(["pki", "init", "--dir", sys.argv[1], "--host", "localhost"])
except SystemExit as done:
    assert done.code == 0, done.code
try:
    main(["pki", "add-site", "hospital-a", "--dir", sys.argv[1]])
except SystemExit as done:
    assert done.code == 0, done.code
print(sorted(name for name in ("torch", "timm", "pandas", "flwr") if name in sys.modules))
"""


def test_pki_commands_do_not_load_the_model_stack(tmp_path):
    """An operator's key commands answer in a fraction of a second, not the seconds torch takes."""
    done = subprocess.run([sys.executable, "-c", PKI_ONLY, str(tmp_path / "pki")], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "pki" / "sites" / "hospital-a" / "site.key").is_file()
