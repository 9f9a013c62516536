"""Errors an operator can act on: Flower's refusals (reported by Flower only as a code or a
connection error) become one sentence naming the cause and the fix, at the site
(``client/client_cli.py``) and at the coordinator (``server/flower_runtime.py``); two sites on
one host do not fight over the ClientApp port."""

from __future__ import annotations

import socket
import sys

import pytest

from client.client_cli import clientapp_port, run_supernode
from server.flower_runtime import Connection, explain_refusal, write_connections


def _fake_supernode(said: str, code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; print({said!r}); sys.exit({code})"]


def test_an_unregistered_or_busy_key_is_explained_at_the_site(capsys):
    said = "ERROR : [code: 2004] Failed to activate SuperNode."
    assert run_supernode(_fake_supernode(said, 1), {}) == 2
    out, err = capsys.readouterr()
    assert said in out  # Flower's own line passes through
    assert "refused this site's key: either it is not registered" in err and "pki add-site" in err


def test_another_federations_ca_is_explained_at_the_site(capsys):
    assert run_supernode(_fake_supernode("ssl: CERTIFICATE_VERIFY_FAILED", 1), {}) == 2
    assert "not signed by the CA given with --root-certificates" in capsys.readouterr().err


def test_a_supernode_that_ends_normally_keeps_its_status(capsys):
    assert run_supernode(_fake_supernode("bye", 0), {}) == 0
    assert run_supernode(_fake_supernode("something else", 3), {}) == 3
    assert "error" not in capsys.readouterr().err


def test_a_taken_clientapp_port_is_refused_and_no_port_takes_a_free_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"--port {port}: the SuperNode's ClientApp port is in use"):
            clientapp_port(port)
        assert clientapp_port(None) not in (port, 0)


def test_an_unreachable_superlink_is_explained_at_the_coordinator(tmp_path):
    write_connections(tmp_path, [Connection("coordinator", "10.0.0.5:9092", root_certificates="/pki/ca.crt")])
    flower = ("flwr run was refused: Connection to the SuperLink is unavailable. Please check your network "
              "connection and 'address' in the SuperLink connection configuration.")
    explained = explain_refusal(flower, "coordinator", {"FLWR_HOME": str(tmp_path)})
    assert explained.startswith("the SuperLink at 10.0.0.5:9092 cannot be reached: check that it is running")
    assert "--root-certificates" in explained and explained.endswith(flower)
    assert explain_refusal("flwr run was refused: something new", "coordinator", {"FLWR_HOME": str(tmp_path)}) \
        == "flwr run was refused: something new"
