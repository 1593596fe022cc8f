"""CLI commands: build (email, text, web version, archive) and check (pre-send checks)."""

from pathlib import Path
from typing import Annotated

import typer

from newsletter.cli.common import (
    IssueFile,
    ProjectOption,
    app,
    console,
    err_console,
    get_issue,
    relative,
    user_errors,
)


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
    issue = get_issue(file, project)
    with user_errors():
        result = issue.build(out)
    rendered = result.rendered
    size = len(rendered.html.encode("utf-8")) / 1000
    console.print(f"Built {rendered.slug} into {relative(result.issue_dir)}/",
                  markup=False, soft_wrap=True)
    console.print(f"  email.html  the email ({size:.1f} KB; unsubscribe link filled in at send time)",
                  markup=False, soft_wrap=True)
    console.print("  email.txt   its plain-text part", markup=False, soft_wrap=True)
    console.print(f"  index.html  the web version, online at {rendered.web_url}",
                  markup=False, soft_wrap=True)
    for name in sorted(rendered.ics):
        console.print(f"  {name}", markup=False, soft_wrap=True)
    for image in {image.name: image for image in rendered.images}.values():  # each file once
        console.print(f"  {image.name}  {image.path}, {image.width}×{image.height} px",
                      markup=False, soft_wrap=True)
    console.print(f"Archive: {relative(result.out_dir / 'index.html')}, "
                  f"feed: {relative(result.out_dir / 'feed.xml')}", markup=False, soft_wrap=True)


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
    issue = get_issue(file, project)
    with user_errors():
        report = issue.check(links=links)
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
