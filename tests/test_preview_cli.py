"""`newsletter preview` as a user starts it: a real process serving on 127.0.0.1."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.web.preview import HOST

REPO = Path(__file__).resolve().parent.parent
HEADLINE = "Jetzt anmelden zum 8. MPSC-Kongress in Berlin"


def _read_line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"no output from `newsletter preview`; stderr: {stderr}")


def test_command_prints_the_url_serves_the_issue_and_stops_on_ctrl_c(project_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "preview", "issues/2026-02.yaml", "--port", "0", "--no-open"],
        cwd=project_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = _read_line(proc)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        url = match.group(0)
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200
        assert "newsletter preview" in page.text
        assert HEADLINE in httpx.get(url + "email.html", timeout=30).text
        assert HEADLINE in httpx.get(url + "email.txt", timeout=30).text
        assert httpx.get(url + "outbox", timeout=30).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_busy_port_is_a_clear_error(project_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(project_dir)
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["preview", "issues/2026-02.yaml", "--port", str(port), "--no-open"])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "--port" in result.output
    assert "Traceback" not in result.output


def test_a_missing_issue_file_is_a_clear_error(project_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(project_dir)
    result = CliRunner().invoke(app, ["preview", "issues/2099-01.yaml", "--no-open"])
    assert result.exit_code == 1
    assert "issues/2099-01.yaml: no such file" in result.output
