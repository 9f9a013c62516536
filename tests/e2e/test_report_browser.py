"""``report.html`` in a real browser (Debian's headless Chromium, installed by ``make test``): the
page renders, every plot and image is drawn, and no request leaves the page. Requests are caught
by pointing the browser at a local proxy that records every connection; a control page that
does load outside files proves the proxy sees page requests, and the browser's own background
calls, measured on an empty page, are subtracted by host."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from shared_model.reporting.run_report import write_run_report
from tests.fixtures.run_folder import make_run_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("RETINAFL_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (make test installs Debian's chromium package)")
        pytest.skip("chromium is not installed")
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[str] = []

    def record() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    requests.append(conn.recv(4096).split(b"\r\n")[0].decode(errors="replace"))
                except OSError:
                    pass

    threading.Thread(target=record, daemon=True).start()
    yield listener.getsockname()[1], requests
    listener.close()


def _render(browser, page: Path, profile: Path) -> tuple[str, set[str]]:
    """The page's DOM after load, and the hosts the browser contacted meanwhile."""
    port, requests = browser
    requests.clear()
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         f"--proxy-server=http://127.0.0.1:{port}", "--proxy-bypass-list=<-loopback>", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-pings",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    hosts = set()
    for line in requests:
        if not line:  # a connection opened ahead of need (Chromium preconnects to its proxy) that sent nothing
            continue
        method, _, target = line.partition(" ")
        target = target.split(" ")[0]
        hosts.add(target.split(":")[0] if method == "CONNECT" else re.sub(r"^https?://([^/:]+).*", r"\1", target))
    return done.stdout, hosts


def test_report_renders_with_its_plots_and_sends_no_request(browser, tmp_path):
    _, background = _render(browser, _write(tmp_path / "blank.html", "<!DOCTYPE html><title>blank</title>"),
                            tmp_path / "profile")
    leak = _write(tmp_path / "leak.html", '<img src="http://leak-check.invalid/pixel.png">'
                  '<script>fetch("https://leak-check-2.invalid/x")</script>')
    _, leaked = _render(browser, leak, tmp_path / "profile")
    assert {"leak-check.invalid", "leak-check-2.invalid"} <= leaked  # the proxy sees page requests
    report = write_run_report(make_run_folder(tmp_path))
    dom, contacted = _render(browser, report, tmp_path / "profile")
    assert contacted - background == set(), f"the report made requests: {contacted - background}"
    body = re.search(r"<body([^>]*)>", dom).group(1)
    marks = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body))
    # loss per site, ACA, ε, bytes, one confusion matrix; one sample grid, decoded.
    assert marks == {"plots": "5", "images": "1", "images-decoded": "1"}, body
    assert "RetinaFL run report" in dom and "Last evaluation" in dom


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
