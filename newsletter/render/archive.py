"""`newsletter build`: write one rendered issue into the web archive directory.

    DIR/<slug>/email.html   the email as sent (unsubscribe placeholder inside)
    DIR/<slug>/email.txt    its plain-text part
    DIR/<slug>/index.html   the web version (no placeholder)
    DIR/<slug>/*.ics        one calendar file per event
    DIR/<slug>/<name>-<hash>.jpg|png  the issue's local images, resized (render/images.py)
    DIR/<slug>/issue.json   what the archive page and feed need to list the issue
    DIR/index.html          every built issue, newest first
    DIR/feed.xml            the same as an Atom feed

Nothing depends on the clock or on file order: the same input gives
byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from newsletter.content.validate import LoadedIssue
from newsletter.errors import NewsletterError
from newsletter.project import Project
from newsletter.render.html import RenderedIssue, render_issue
from newsletter.render.images import write_images
from newsletter.render.templates import render_template

META_NAME = "issue.json"


@dataclass(frozen=True)
class BuildResult:
    rendered: RenderedIssue
    out_dir: Path
    issue_dir: Path
    files: list[Path]


def _write(path: Path, text: str) -> Path:
    # newline="" keeps the CRLF line ends RFC 5545 wants in .ics files.
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return path


def build_issue(loaded: LoadedIssue, project: Project, out_dir: Path | None = None) -> BuildResult:
    """Render `loaded` and write it (and the refreshed archive) under `out_dir`."""
    rendered = render_issue(loaded, project)
    out = (out_dir or project.dist_dir).resolve()
    issue_dir = out / rendered.slug
    try:
        issue_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NewsletterError(f"{issue_dir}: cannot create the output directory: {exc.strerror}") from None
    for stale in issue_dir.glob("*.ics"):
        if stale.name not in rendered.ics:
            stale.unlink()  # an event renamed or removed since the last build
    files = [
        _write(issue_dir / "email.html", rendered.html),
        _write(issue_dir / "email.txt", rendered.text),
        _write(issue_dir / "index.html", rendered.web_html),
    ]
    files += [_write(issue_dir / name, body) for name, body in sorted(rendered.ics.items())]
    # Earlier versions of an image stay: mails sent before still show them.
    files += write_images(rendered.images, issue_dir)
    meta = {
        "slug": rendered.slug, "subject": rendered.subject, "preheader": rendered.preheader,
        "date": rendered.date.isoformat(), "web_url": rendered.web_url,
    }
    files.append(_write(issue_dir / META_NAME, json.dumps(meta, ensure_ascii=False, indent=2,
                                                          sort_keys=True) + "\n"))
    files += refresh_archive(out, project)
    return BuildResult(rendered=rendered, out_dir=out, issue_dir=issue_dir, files=files)


def built_issues(out_dir: Path) -> list[dict[str, Any]]:
    """The issues built into `out_dir`, newest first."""
    issues = []
    for meta_file in sorted(out_dir.glob(f"*/{META_NAME}")):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            meta["date"] = date.fromisoformat(meta["date"])
        except (ValueError, KeyError, TypeError) as exc:
            raise NewsletterError(f"{meta_file}: not written by `newsletter build` ({exc}); "
                                  "delete the directory and build again") from None
        issues.append(meta)
    issues.sort(key=lambda m: (m["date"], m["slug"]), reverse=True)
    return issues


def refresh_archive(out_dir: Path, project: Project) -> list[Path]:
    """Rewrite DIR/index.html and DIR/feed.xml from the issues built into DIR."""
    issues = built_issues(out_dir)
    # render_template adds the base context (newsletter, imprint, theme, archive_url, …).
    context = {
        "issues": issues,
        "updated": f"{issues[0]['date'].isoformat() if issues else '1970-01-01'}T00:00:00Z",
    }
    return [
        _write(out_dir / "index.html", render_template(project, "archive.html.j2", context)),
        _write(out_dir / "feed.xml", render_template(project, "feed.xml.j2", context)),
    ]
