"""CLI commands: build (email, text, web version, archive) and check (pre-send checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from newsletter.cli.common import ProjectOption, app, console, err_console, user_errors
from newsletter.config import Project, load_project
from newsletter.content.validate import LoadedIssue, load_issue
from newsletter.render.archive import build_issue
from newsletter.render.check import check_issue

IssueFile = Annotated[Path, typer.Argument(help="The issue file, e.g. issues/2026-02.yaml.",
                                           show_default=False)]


def _load(file: Path, project: Path | None) -> tuple[LoadedIssue, Project]:
    # Without --project, the project is the one the issue file lives in.
    proj = load_project(project if project is not None else file.resolve().parent)
    loaded = load_issue(file)
    for warning in loaded.warnings:
        err_console.print(warning.format(), markup=False, soft_wrap=True)
    return loaded, proj


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@app.command()
def build(
    file: IssueFile,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default: dist/).",
                                             show_default=False)] = None,
    project: ProjectOption = None,
) -> None:
    """Render an issue: DIR/<slug>/email.html, email.txt, index.html (web version),
    one .ics per event; refresh DIR/index.html (archive) and DIR/feed.xml (Atom).

    Example: [bold]newsletter build issues/2026-02.yaml --out dist[/bold]
    """
    with user_errors():
        loaded, proj = _load(file, project)
        result = build_issue(loaded, proj, out)
    rendered = result.rendered
    size = len(rendered.html.encode("utf-8")) / 1000
    console.print(f"Built {rendered.slug} into {_relative(result.issue_dir)}/",
                  markup=False, soft_wrap=True)
    console.print(f"  email.html  the email ({size:.1f} KB; unsubscribe link filled in at send time)",
                  markup=False, soft_wrap=True)
    console.print("  email.txt   its plain-text part", markup=False, soft_wrap=True)
    console.print(f"  index.html  the web version, online at {rendered.web_url}",
                  markup=False, soft_wrap=True)
    for name in sorted(rendered.ics):
        console.print(f"  {name}", markup=False, soft_wrap=True)
    console.print(f"Archive: {_relative(result.out_dir / 'index.html')}, "
                  f"feed: {_relative(result.out_dir / 'feed.xml')}", markup=False, soft_wrap=True)


@app.command()
def check(
    file: IssueFile,
    links: Annotated[bool, typer.Option("--links", help="Also fetch every link and image URL.")] = False,
    project: ProjectOption = None,
) -> None:
    """Pre-send checks: size against Gmail's clipping limit, alt texts, unsubscribe link and
    imprint in both parts, subject/preheader, vague link texts; --links finds broken URLs.
    Exit code 1 when there are errors.

    Example: [bold]newsletter check issues/2026-02.yaml --links[/bold]
    """
    with user_errors():
        proj = load_project(project if project is not None else file.resolve().parent)
        loaded = load_issue(file)
        report = check_issue(loaded, proj, links=links)
    for problem in report.problems:
        err_console.print(problem.format(), markup=False, soft_wrap=True)
    summary = f"{file}: HTML {report.html_bytes / 1000:.1f} KB of Gmail's 102 KB"
    if links:
        summary += f", {report.links_checked} URLs fetched"
        if report.links_skipped:
            summary += f" ({report.links_skipped} to base_url not fetched)"
    summary += f"; {len(report.errors)} errors, {len(report.warnings)} warnings"
    console.print(summary, markup=False, soft_wrap=True)
    if report.errors:
        raise typer.Exit(1)
