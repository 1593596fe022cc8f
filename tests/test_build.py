"""`newsletter build`: the files it writes, the archive page, the feed, determinism."""

from __future__ import annotations

import shutil
from pathlib import Path

import lxml.etree
import lxml.html
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.render.html import UNSUBSCRIBE_PLACEHOLDER

GOLDEN = Path(__file__).parent / "golden"
ATOM = "{http://www.w3.org/2005/Atom}"


def build(project_dir: Path, *args: str):
    return CliRunner().invoke(app, ["build", *args, "--project", str(project_dir)])


def snapshot(directory: Path) -> dict[str, bytes]:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def test_build_writes_email_text_web_version_and_calendar_files(project_dir: Path) -> None:
    result = build(project_dir, str(project_dir / "issues" / "2026-02.yaml"))
    assert result.exit_code == 0, result.output
    issue_dir = project_dir / "dist" / "2026-02"
    names = sorted(p.name for p in issue_dir.iterdir())
    assert names == [
        "2025-06-03-regionalkonferenz-mpsc-smart-sein.ics",
        "2026-04-28-jetzt-anmelden-zum-8-mpsc-kongress-in-berlin.ics",
        "email.html", "email.txt", "index.html", "issue.json",
    ]
    assert "dist/2026-02" in result.output and "KB" in result.output
    email = (issue_dir / "email.html").read_text(encoding="utf-8")
    web = (issue_dir / "index.html").read_text(encoding="utf-8")
    assert f'href="{UNSUBSCRIBE_PLACEHOLDER}"' in email
    assert UNSUBSCRIBE_PLACEHOLDER in (issue_dir / "email.txt").read_text(encoding="utf-8")
    assert UNSUBSCRIBE_PLACEHOLDER not in web
    calendar_links = lxml.html.fromstring(web).xpath('//a[text()="In den Kalender eintragen"]/@href')
    assert calendar_links == ["2026-04-28-jetzt-anmelden-zum-8-mpsc-kongress-in-berlin.ics",
                              "2025-06-03-regionalkonferenz-mpsc-smart-sein.ics"]
    ics = (issue_dir / calendar_links[0]).read_bytes()
    assert ics.startswith(b"BEGIN:VCALENDAR\r\n") and b"DTSTART;VALUE=DATE:20260428\r\n" in ics


def test_rebuilding_gives_byte_identical_files(project_dir: Path) -> None:
    issue = str(project_dir / "issues" / "2026-02.yaml")
    assert build(project_dir, issue).exit_code == 0
    first = snapshot(project_dir / "dist")
    shutil.rmtree(project_dir / "dist")
    assert build(project_dir, issue).exit_code == 0
    assert snapshot(project_dir / "dist") == first


def test_archive_and_feed_list_every_issue_newest_first(project_dir: Path, tmp_path: Path) -> None:
    older = project_dir / "issues" / "2025-12.yaml"
    older.write_text(
        (project_dir / "issues" / "2026-02.yaml").read_text(encoding="utf-8")
        .replace("date: 2026-02-10", "date: 2025-12-01")
        .replace('subject: "Smart zu wissen:', 'subject: "Dezember & mehr:'),
        encoding="utf-8")
    out = tmp_path / "site"
    assert build(project_dir, str(project_dir / "issues" / "2026-02.yaml"), "--out", str(out)).exit_code == 0
    assert build(project_dir, str(older), "--out", str(out)).exit_code == 0
    archive = lxml.html.fromstring((out / "index.html").read_text(encoding="utf-8"))
    assert archive.xpath("//li/a/@href") == ["2026-02/", "2025-12/"]
    assert archive.xpath("//li/a")[1].text_content().startswith("Dezember & mehr:")
    feed = lxml.etree.fromstring((out / "feed.xml").read_bytes())
    assert feed.tag == f"{ATOM}feed"
    entries = feed.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}id") for e in entries] == [
        "http://127.0.0.1:8000/archive/2026-02/", "http://127.0.0.1:8000/archive/2025-12/"]
    assert entries[1].findtext(f"{ATOM}title").startswith("Dezember & mehr:")
    assert feed.findtext(f"{ATOM}updated") == "2026-02-10T00:00:00Z"
    for required in ("title", "id", "updated"):
        assert all(e.find(f"{ATOM}{required}") is not None for e in entries)
    assert not (project_dir / "dist").exists()


def test_invalid_issue_fails_with_location_and_writes_nothing(project_dir: Path) -> None:
    bad = project_dir / "issues" / "bad.yaml"
    bad.write_text("subject: Test\ndate: 2026-02-31\nsections: []\n", encoding="utf-8")
    result = build(project_dir, str(bad))
    assert result.exit_code == 1
    assert "bad.yaml:2:7" in result.output and "no such day" in result.output
    assert "Traceback" not in result.output
    assert not (project_dir / "dist").exists()


def test_broken_template_fails_without_traceback(project_dir: Path) -> None:
    (project_dir / "templates" / "base.mjml.j2").write_text(
        "<mjml><mj-body><mj-secton></mj-secton></mj-body></mjml>\n", encoding="utf-8")
    result = build(project_dir, str(project_dir / "issues" / "2026-02.yaml"))
    assert result.exit_code == 1
    assert "unknown MJML tag <mj-secton>" in result.output and "Traceback" not in result.output
    assert not (project_dir / "dist").exists()
