"""Commands about issue files: init, new, validate, schema."""

import json
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from newsletter import scaffold
from newsletter.cli.common import (
    ProjectOption,
    app,
    console,
    fail,
    get_project,
    plain,
    user_errors,
)
from newsletter.errors import NewsletterError, Problem


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Issue files to check.", show_default=False)],
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
) -> None:
    """Check issue files; print every problem as FILE:LINE:COL: field: message.

    Example: [bold]newsletter validate issues/*.yaml[/bold]
    """
    from newsletter.content.validate import load_issue

    failed = False
    for file in files:
        try:
            topics, root = _project_facts(file)
            loaded = load_issue(file, strict=strict, topics=topics, root=root)
        except NewsletterError as error:
            failed = True
            for line in error.lines():
                plain(line, err=True)
            continue
        for warning in loaded.warnings:
            plain(warning.format(), err=True)
        issue = loaded.issue
        items = sum(_count_items(section) for section in issue.sections)
        plain(f"{file}: ok — “{issue.subject}”, {issue.date:%d.%m.%Y}, "
              f"{_plural(len(issue.sections), 'section')}, {_plural(items, 'item')}")
    if failed:
        raise typer.Exit(1)


def _project_facts(file: Path) -> tuple[set[str] | None, Path | None]:
    """Every topic key the issue's project declares (`[topics.<list>]`), to warn about others,
    and the project directory, which local images may not leave; (None, None) when no project
    (or no readable newsletter.toml) is around the file: nothing to check."""
    from newsletter.project import open_project

    try:
        project = open_project(near=file)
    except NewsletterError:
        return None, None
    return {key for keys in project.settings.topics.values() for key in keys}, project.root


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _count_items(section: object) -> int:
    for name in ("items", "events", "links", "blocks"):
        value = getattr(section, name, None)
        if isinstance(value, list):
            return len(value)
    return 1


@app.command()
def schema() -> None:
    """Print the JSON Schema of the issue format (for editor autocompletion).

    Example: [bold]newsletter schema > issue.schema.json[/bold]
    """
    print(json.dumps(issue_json_schema(), ensure_ascii=False, indent=2))


def issue_json_schema() -> dict:
    """The JSON Schema of an issue file, as `newsletter schema` prints it."""
    # Draft-07: the version the yaml-language-server (VS Code's Red Hat YAML)
    # fully supports; pydantic's `$defs` references resolve in it as JSON pointers.
    from newsletter.content.model import Issue

    data = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "newsletter issue"}
    data.update({k: v for k, v in Issue.model_json_schema().items() if k != "title"})
    return data


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
) -> None:
    """Create a newsletter project: newsletter.toml, an example issue, templates/, subscribers/.

    Example: [bold]newsletter init mein-newsletter[/bold]
    """
    with user_errors():
        created = scaffold.init_project(directory)
    for path in created:
        console.print(f"created {path}", markup=False)
    console.print(f"Next: cd {directory} && newsletter validate issues/*.yaml", markup=False)


@app.command()
def new(
    on: Annotated[
        str | None,
        typer.Option("--date", help="Publication date (2026-03-01 or 01.03.2026); default: today.",
                     show_default=False),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to put the file (default: the project's issues/).",
                     show_default=False),
    ] = None,
    from_feed: Annotated[
        list[str] | None,
        typer.Option("--from-feed", metavar="URL", show_default=False,
                     help="An RSS or Atom feed whose entries become `news` items (repeat for more)."),
    ] = None,
    from_ics: Annotated[
        list[str] | None,
        typer.Option("--from-ics", metavar="URL", show_default=False,
                     help="An iCalendar feed whose events become an `events` section (repeatable)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", show_default=False,
                     help="Only feed entries from this day on; default: the date of the latest issue."),
    ] = None,
    project: ProjectOption = None,
) -> None:
    """Start a new issue file from a skeleton, named after its date; or a draft from feeds.

    Example: [bold]newsletter new --date 2026-03-01[/bold]

    Example: [bold]newsletter new --from-feed https://www.musterstadt.de/aktuelles.rss
    --from-ics https://www.musterstadt.de/termine.ics[/bold]
    """
    when = _day_option("--date", on) or date.today()
    feeds, calendars = from_feed or [], from_ics or []
    if since is not None and not (feeds or calendars):
        fail(NewsletterError(problems=[Problem("--since", None, None, "",
                                               "only with --from-feed or --from-ics")]))
    since_day = _day_option("--since", since)
    if not (feeds or calendars):
        if directory is None:
            directory = get_project(project).issues_dir
        with user_errors():
            path = scaffold.new_issue(directory, when)
        console.print(f"created {_relative(path)}", markup=False)
        return
    from newsletter.editorial import draft_from_feeds, latest_issue_date
    from newsletter.project import Project, open_project

    found: Project | None
    if directory is None:
        found = get_project(project)
        directory = found.issues_dir
    else:
        try:
            found = open_project(project, near=directory)
        except NewsletterError:
            found = None  # outside a project: the default time zone
    if since is None:
        since_day = latest_issue_date(directory)
    with user_errors():
        text, problems = draft_from_feeds(found, feeds, calendars, since_day, on=when)
    for problem in problems:
        plain(problem.format(), err=True)
    if text is None:
        plain("no feed could be read; no file written", err=True)
        raise typer.Exit(1)
    with user_errors():
        path = scaffold.new_issue(directory, when, text)
    console.print(f"created {_relative(path)}", markup=False)


def _day_option(option: str, value: str | None) -> date | None:
    """The date an option gives (`parse_day`), or exit 1 saying what is wrong with it."""
    from newsletter.content.model import parse_day

    try:
        return parse_day(value) if value else None
    except ValueError as exc:
        fail(NewsletterError(problems=[Problem(option, None, None, "", str(exc))]))


def _relative(path: Path) -> Path:
    """`path` relative to the current directory where it is below it, for shorter output."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path
