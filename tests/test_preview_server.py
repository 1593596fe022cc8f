"""The preview server over plain HTTP: loopback only, outbox pages, issues outside the project."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx

from newsletter.project import open_project
from newsletter.web.preview import bind, create_preview_app, serve_in_background


def wait_for_state(url: str, predicate, timeout: float = 30) -> dict:
    """Poll the page's state until `predicate` holds (generous deadline, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        state = httpx.get(url + "state.json", timeout=30).json()
        if predicate(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_the_server_listens_on_loopback_only() -> None:
    sock = bind(0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


def test_outbox_pages_without_mail(project_dir: Path) -> None:
    project = open_project(project_dir)
    with serve_in_background(create_preview_app(project, project_dir / "issues" / "2026-02.yaml")) as url:
        listing = httpx.get(url + "outbox", timeout=30)
        assert listing.status_code == 200
        assert "The outbox is empty" in listing.text
        assert httpx.get(url + "outbox/1700000000.M1P1Q1.host", timeout=30).status_code == 404
        # The email frames may not run scripts, whatever a template contains.
        email = httpx.get(url + "email.html", timeout=30)
        assert "default-src 'none'" in email.headers["content-security-policy"]


def test_an_issue_outside_the_project_is_watched_too(project_dir: Path, tmp_path: Path) -> None:
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    issue = drafts / "entwurf.yaml"
    shutil.copy(project_dir / "issues" / "2026-02.yaml", issue)
    project = open_project(project_dir)
    with serve_in_background(create_preview_app(project, issue)) as url:
        assert wait_for_state(url, lambda s: s["ok"])["ok"]
        text = issue.read_text(encoding="utf-8")
        issue.write_text(re.sub(r"^subject: .*$", 'subject: "Entwurf – bitte nicht senden"', text,
                                count=1, flags=re.M), encoding="utf-8")
        state = wait_for_state(url, lambda s: s["subject"].startswith("Entwurf – "))
        assert state["subject"].startswith("Entwurf – ")
        assert "Entwurf – " in httpx.get(url + "email.html", timeout=30).text
