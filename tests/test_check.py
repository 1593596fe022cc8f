"""`newsletter check`: size, alt texts, unsubscribe/imprint, vague link texts, live links."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.validate import load_issue
from newsletter.project import open_project
from newsletter.render.check import check_issue


def check(project_dir: Path, *args: str):
    return CliRunner().invoke(app, ["check", *args, "--project", str(project_dir)])


def offline_imprint(project_dir: Path) -> None:
    """Drop the imprint's example.org links, which cannot be fetched from the test machine."""
    toml = project_dir / "newsletter.toml"
    lines = toml.read_text(encoding="utf-8").splitlines()
    toml.write_text("\n".join(li for li in lines if not li.startswith(("url =", "privacy_url ="))) + "\n",
                    encoding="utf-8")


def write_issue(project_dir: Path, body: str, name: str = "test.yaml") -> Path:
    path = project_dir / "issues" / name
    path.write_text(body, encoding="utf-8")
    return path


SIMPLE = """\
subject: Ein kurzer Test
preheader: Alles, was man vor dem Versand wissen muss, in einer Zeile.
date: 2026-03-01
sections:
  - kind: digest
    heading: Meldungen
    items:
      - headline: Eine Meldung
        body: Text der Meldung mit einem [Bericht]({ok}).
        links:
          - label: {label}
            url: {missing}
        image:
          url: {image}
          alt: Ein Testbild
          width: 10
          height: 10
"""


def test_example_issue_passes(project_dir: Path) -> None:
    result = check(project_dir, str(project_dir / "issues" / "2026-02.yaml"))
    assert result.exit_code == 0, result.output
    assert "0 errors, 0 warnings" in result.output
    assert "KB of Gmail's 102 KB" in result.output


def test_vague_link_text_is_reported_with_its_location(project_dir: Path) -> None:
    path = write_issue(project_dir, SIMPLE.format(
        ok="https://example.org/ok", label="Hier klicken", missing="https://example.org/x",
        image="https://example.org/bild.png"))
    result = check(project_dir, str(path))
    assert result.exit_code == 0  # a warning, not an error
    assert "test.yaml:11:20: warning: sections[0].items[0].links[0].label: link text `Hier klicken`" in (
        result.output)


def test_missing_unsubscribe_link_and_imprint_fail(project_dir: Path) -> None:
    templates = project_dir / "templates"
    (templates / "base.mjml.j2").write_text(
        '{% extends "default:base.mjml.j2" %}{% block footer %}{% endblock %}\n', encoding="utf-8")
    (templates / "email.txt.j2").write_text(
        '{% extends "default:email.txt.j2" %}{% block footer %}{% endblock %}\n', encoding="utf-8")
    result = check(project_dir, str(project_dir / "issues" / "2026-02.yaml"))
    assert result.exit_code == 1
    assert "the HTML part has no unsubscribe link" in result.output
    assert "the text part has no unsubscribe link" in result.output
    assert "the HTML part does not show the imprint address" in result.output
    assert "the text part does not show the imprint name" in result.output


def test_image_without_alt_from_a_template_is_an_error(project_dir: Path) -> None:
    (project_dir / "templates" / "base.mjml.j2").write_text(
        '{% extends "default:base.mjml.j2" %}{% block header %}<mj-section><mj-column>'
        '<mj-image src="https://example.org/kopf.png" width="600px" /></mj-column></mj-section>'
        "{% endblock %}\n", encoding="utf-8")
    result = check(project_dir, str(project_dir / "issues" / "2026-02.yaml"))
    assert result.exit_code == 1
    assert "image https://example.org/kopf.png has no alt text" in result.output


def test_html_over_gmail_limit_fails(project_dir: Path) -> None:
    items = "".join(
        f"      - date: 2026-03-01\n        title: Meldung Nummer {i}\n"
        f"        url: https://example.org/meldung/{i}\n"
        f"        teaser: {'Ein langer Teaser mit vielen Wörtern. ' * 8}\n"
        for i in range(150))
    path = write_issue(project_dir, "subject: Sehr lang\npreheader: Sehr viele Meldungen auf einmal.\n"
                       "date: 2026-03-01\nsections:\n  - kind: news\n    heading: Alles\n    items:\n"
                       + items)
    result = check(project_dir, str(path))
    assert result.exit_code == 1
    assert "Gmail cuts off everything after 102 KB" in result.output


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        if self.path == "/no-head":
            self.send_response(405)
        else:
            self.send_response(200 if self.path in ("/ok", "/bild.png") else 404)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/no-head" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_links_option_fetches_every_url_and_reports_broken_ones(project_dir: Path, http_base: str) -> None:
    offline_imprint(project_dir)
    path = write_issue(project_dir, SIMPLE.format(
        ok=f"{http_base}/no-head", label="Zur Anmeldung", missing=f"{http_base}/fehlt",
        image=f"{http_base}/bild.png"))
    result = check(project_dir, str(path), "--links")
    assert result.exit_code == 1, result.output
    assert (f"test.yaml:12:18: sections[0].items[0].links[0].url: broken link (404 Not Found): "
            f"{http_base}/fehlt") in result.output
    assert "no-head" not in result.output and "bild.png" not in result.output
    assert "3 URLs fetched" in result.output
    assert "to base_url not fetched" in result.output


def test_unreachable_host_is_reported(project_dir: Path) -> None:
    offline_imprint(project_dir)
    path = write_issue(project_dir, SIMPLE.format(
        ok="http://127.0.0.1:9/closed", label="Zur Anmeldung", missing="http://127.0.0.1:9/auch",
        image="http://127.0.0.1:9/bild.png"))
    report = check_issue(load_issue(path), open_project(project_dir), links=True)
    messages = [p.message for p in report.errors]
    assert len(messages) == 3 and all("unreachable (ConnectError)" in m for m in messages)
