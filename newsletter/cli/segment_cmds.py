"""CLI commands: `segments …`, the `[segments.<name>]` conditions of newsletter.toml
(docs/segments.md)."""

import typer

from newsletter.cli.common import (
    JsonOption,
    ProjectOption,
    app,
    console,
    get_project,
    plain,
    print_json,
    user_errors,
)

segments_app = typer.Typer(help="Segments: named conditions on a list's members ([segments.NAME] "
                                "in newsletter.toml).", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(segments_app, name="segments")


@segments_app.command("ls")
def segments_ls(json: JsonOption = False, project: ProjectOption = None) -> None:
    """Show the segments with their condition and how many subscribed members each has per list.

    A segment tied to a list (`list = "news"`) is counted on that list, any other on every list.

    Example: [bold]newsletter segments ls --json[/bold]
    """
    from rich.table import Table

    from newsletter.audience.segments import count_members, load_segments

    with user_errors(), get_project(project) as proj:
        segments = load_segments(proj)
        lists = proj.store.lists() if segments else []
        rows = []
        for segment in segments.values():
            on = [ml for ml in lists if segment.list_name in (None, ml.name)]
            rows.append((segment, {ml.name: count_members(proj.store, ml.id, segment) for ml in on}))
    if json:
        print_json([{"name": s.name, "list": s.list_name, "title": s.title, "where": s.where,
                     "members": counts} for s, counts in rows])
        return
    if not rows:
        console.print("no segments; define them in newsletter.toml as [segments.NAME] with "
                      "where = '…' (docs/segments.md)", markup=False)
        return
    table = Table("name", "list", "title", "where", "subscribed members")
    for segment, counts in rows:
        shown = ", ".join(f"{name}: {count}" for name, count in counts.items())
        if segment.list_name is not None and not counts:
            shown = "(no such list)"
        where = " ".join(segment.where.split())
        table.add_row(segment.name, segment.list_name or "(any)", segment.title or "", where,
                      shown or "(no lists)")
    console.print(table)


@segments_app.command("check")
def segments_check(project: ProjectOption = None) -> None:
    """Check every segment: its condition (errors as FILE:LINE:COL inside `where`), that its list
    exists, and warn about attributes no subscriber has. Exit status 1 on any error.

    Example: [bold]newsletter segments check[/bold]
    """
    from newsletter.audience.segments import check_segments, load_segments

    with user_errors(), get_project(project) as proj:
        segments = load_segments(proj)
        problems = check_segments(proj.store, segments, proj) if segments else []
    for problem in problems:
        plain(problem.format(), err=True)
    errors = sum(problem.severity == "error" for problem in problems)
    if errors:
        raise typer.Exit(1)
    count = len(segments)
    plain(f"{count} segment{'' if count == 1 else 's'} OK" if count else
          "no segments in newsletter.toml")
