"""CLI commands: `lists …` and `subscribers …` over the audience package."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from newsletter.audience.statuses import STATUSES
from newsletter.cli.common import (
    JsonOption,
    ProjectOption,
    app,
    console,
    err_console,
    get_project,
    print_json,
    user_errors,
)

if TYPE_CHECKING:
    from newsletter.audience.segments import Segment
    from newsletter.audience.store import Store
    from newsletter.project import Project

lists_app = typer.Typer(help="Manage mailing lists.", no_args_is_help=True, rich_markup_mode="rich")
subscribers_app = typer.Typer(help="Manage subscribers: import, export, add, remove, list, show.",
                              no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(lists_app, name="lists")
app.add_typer(subscribers_app, name="subscribers")

StatusChoice = Enum("StatusChoice", {s: s for s in STATUSES}, type=str)  # type: ignore[misc]
ListOption = Annotated[str, typer.Option("--list", "-l", help="Name of the list.", show_default=False)]
# Show a progress bar for files with more lines than this.
PROGRESS_MIN_LINES = 5000


@contextmanager
def opened(project: Path | None) -> Iterator["Store"]:
    """The project's store, with user errors turned into exit 1."""
    with user_errors(), get_project(project) as proj:
        yield proj.store


@contextmanager
def opened_project(project: Path | None) -> Iterator["Project"]:
    with user_errors(), get_project(project) as proj:
        yield proj


# --- lists ------------------------------------------------------------------------------------


@lists_app.command("create")
def lists_create(
    name: Annotated[str, typer.Argument(help="Short name, e.g. `news`.", show_default=False)],
    title: Annotated[str | None, typer.Option("--title", help="Human-readable title.")] = None,
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Succeed quietly if the list already exists.")
    ] = False,
    project: ProjectOption = None,
) -> None:
    """Create a mailing list.

    Example: [bold]newsletter lists create news --title "Stadtnewsletter"[/bold]
    """
    with opened(project) as store:
        if exist_ok and any(existing.name == name for existing in store.lists()):
            console.print(f"list {name} exists", markup=False)
            return
        created = store.create_list(name, title)
    console.print(f"created list {created.name}" + (f" ({created.title})" if created.title else ""),
                  markup=False)


@lists_app.command("ls")
def lists_ls(json: JsonOption = False, project: ProjectOption = None) -> None:
    """Show all lists with their member counts per status.

    Example: [bold]newsletter lists ls --json[/bold]
    """
    from rich.table import Table

    with opened(project) as store:
        counts = store.list_counts()
    if json:
        print_json([{"id": c.list.id, "name": c.list.name, "title": c.list.title,
                     "created_at": c.list.created_at, "counts": c.counts} for c in counts])
        return
    if not counts:
        console.print("no lists yet; create one with `newsletter lists create NAME`", markup=False)
        return
    table = Table("name", "title", *STATUSES)
    for c in counts:
        table.add_row(c.list.name, c.list.title or "", *(str(c.counts[s]) for s in STATUSES))
    console.print(table)


# --- subscribers ------------------------------------------------------------------------------


@subscribers_app.command("import")
def subscribers_import(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV", help="CSV file with a header row.",
                                             show_default=False)],
    list_name: ListOption,
    confirmed: Annotated[bool, typer.Option(
        "--confirmed", help="You have proof of prior consent: import as subscribed, not pending.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would happen; change nothing.")]
    = False,
    json: JsonOption = False,
    project: ProjectOption = None,
) -> None:
    """Import subscribers from CSV (UTF-8 or Windows-1252, comma or semicolon separated).

    Rows that cannot be imported are listed as FILE:LINE: reason (exit status 1); all valid rows
    go in together. Unsubscribed, bounced, complained or erased addresses are never re-activated.

    Example: [bold]newsletter subscribers import subscribers/example.csv --list news --confirmed[/bold]
    """

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from newsletter.audience.import_report import format_report

    with opened_project(project) as proj:
        proj.store.get_list(list_name)  # an unknown list is an error before the file is read
        show_bar = err_console.is_terminal and not json and _line_count(csv_file) > PROGRESS_MIN_LINES
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=err_console.rich, transient=True,
                      disable=not show_bar) as bar:
            tasks: dict[str, object] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    label = "reading lines" if phase == "read" else "writing to the database"
                    tasks[phase] = bar.add_task(label, total=total)
                bar.update(tasks[phase], completed=done, total=total)  # type: ignore[arg-type]

            report = proj.import_subscribers(csv_file, list_name, confirmed=confirmed,
                                             dry_run=dry_run, on_progress=progress)
    if json:
        print_json(report.as_dict())
    else:
        for line in format_report(report):
            console.print(line, markup=False, soft_wrap=True)
    for problem in report.problems:
        err_console.print(problem.format(), markup=False, soft_wrap=True)
    if report.problems:
        rows = len(report.problems)
        err_console.print(f"{rows} row{'' if rows == 1 else 's'} rejected"
                          + ("" if dry_run else "; the other rows were imported"), markup=False)
        raise typer.Exit(1)


def _line_count(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0  # import_csv reports the error


@subscribers_app.command("export")
def subscribers_export(
    list_name: ListOption,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")]
    = None,
    project: ProjectOption = None,
) -> None:
    """Write a list as CSV (email, name, status, dates, attributes) — importable again.

    Example: [bold]newsletter subscribers export --list news --out news.csv[/bold]
    """
    from newsletter.audience.export import export_csv

    with opened(project) as store:
        mailing_list = store.get_list(list_name)
        if out is None:
            export_csv(store, mailing_list.id, sys.stdout)
            return
        # BOM: Excel then opens the UTF-8 file with the umlauts intact.
        with out.open("w", encoding="utf-8-sig", newline="") as handle:
            count = export_csv(store, mailing_list.id, handle)
    err_console.print(f"wrote {count} members of {mailing_list.name} to {out}", markup=False)


@subscribers_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="E-mail address.", show_default=False)],
    list_name: ListOption,
    name: Annotated[str | None, typer.Option("--name", help="Name of the person.")] = None,
    confirmed: Annotated[bool, typer.Option(
        "--confirmed", help="You have proof of consent: subscribed, not pending.")] = False,
    project: ProjectOption = None,
) -> None:
    """Add one address to a list (pending unless --confirmed).

    Example: [bold]newsletter subscribers add anna@example.org --list news --name "Anna" --confirmed[/bold]
    """
    with opened(project) as store:
        mailing_list = store.get_list(list_name)
        subscriber_id, changed = store.add_subscriber(email, mailing_list.id, name=name,
                                                      confirmed=confirmed)
        status = store.membership_status(subscriber_id, mailing_list.id)
        found = store.subscriber(subscriber_id)
    assert found is not None
    what = "now" if changed else "already"
    console.print(f"{found.email} is {what} {status} on {mailing_list.name}", markup=False)


@subscribers_app.command("remove")
def subscribers_remove(
    email: Annotated[str, typer.Argument(help="E-mail address.", show_default=False)],
    list_name: Annotated[str | None, typer.Option("--list", "-l", help="Only this list (default: all).")]
    = None,
    forget: Annotated[bool, typer.Option(
        "--forget", help="Erase the person entirely (GDPR erasure), including local copies of mails to "
        "them in outbox/ and dry runs; keep only a hashed block entry.")]
    = False,
    project: ProjectOption = None,
) -> None:
    """Unsubscribe an address (from one list or all), or erase it with --forget.

    Example: [bold]newsletter subscribers remove anna@example.org --list news[/bold]
    """
    with opened_project(project) as proj:
        store = proj.store
        if forget:
            found, removed = proj.forget(email)
            console.print(
                f"erased {email.strip()} from all lists and the consent log; a hashed entry on the "
                "suppression list keeps it from being imported or signed up again"
                if found else
                f"no subscriber {email.strip()}; added a hashed suppression entry so it is never "
                "imported or signed up", markup=False, soft_wrap=True)
            console.print(
                f"deleted {len(removed)} local cop{'y' if len(removed) == 1 else 'ies'} of mails to "
                "the address (outbox/, dry runs); mails already delivered and backups are not "
                "reached by this", markup=False, soft_wrap=True)
            return
        list_id = store.get_list(list_name).id if list_name else None
        changed = store.unsubscribe(email, list_id)
    if changed:
        console.print(f"unsubscribed {email.strip()} from {', '.join(changed)}", markup=False)
    else:
        console.print(f"{email.strip()} was not subscribed; nothing changed", markup=False)


@subscribers_app.command("ls")
def subscribers_ls(
    list_name: Annotated[str | None, typer.Option("--list", "-l", help="Only this list.")] = None,
    status: Annotated[StatusChoice | None, typer.Option("--status", help="Only this status.")] = None,
    segment: Annotated[str | None, typer.Option(
        "--segment", help="Only members in this segment ([segments.NAME] in newsletter.toml); "
        "needs --list unless the segment names its list.", show_default=False)] = None,
    json: JsonOption = False,
    project: ProjectOption = None,
) -> None:
    """List subscribers with their list memberships.

    Example: [bold]newsletter subscribers ls --list news --status pending[/bold]
    (or [bold]newsletter subscribers ls --list news --segment jena[/bold])
    """
    from rich.table import Column, Table

    with opened_project(project) as proj:
        store = proj.store
        chosen = _segment(proj, segment, list_name) if segment else None
        list_name = list_name or (chosen.list_name if chosen else None)
        list_id = store.get_list(list_name).id if list_name else None
        rows = store.member_rows(list_id, status.value if status else None)
        if chosen is not None and list_id is not None:
            from newsletter.audience.segments import segment_member_ids

            inside = segment_member_ids(store, list_id, chosen)
            rows = [r for r in rows if r["id"] in inside]
    if json:
        print_json([{"id": r["id"], "email": r["email"], "name": r["name"], "list": r["list"],
                     "status": r["status"], "created_at": r["created_at"],
                     "updated_at": r["updated_at"], "attributes": r["attributes"]} for r in rows])
        return
    table = Table("name", "list", "status", "since")
    table.columns.insert(0, Column("email", overflow="fold"))
    for r in rows:
        table.add_row(r["email"], r["name"] or "", r["list"], r["status"],
                      f"{r['updated_at']:%Y-%m-%d %H:%M}")
    console.print(table)
    console.print(f"{len(rows)} memberships", markup=False)


def _segment(proj: "Project", name: str, list_name: str | None) -> "Segment":
    """The segment for `subscribers ls --segment`, checked against the list given."""
    from newsletter.audience.segments import SegmentError, load_segment

    chosen = load_segment(proj, name)
    if list_name is not None:
        chosen.check_list(list_name)
    elif chosen.list_name is None:
        raise SegmentError(f"--segment {name} needs --list: the segment is not tied to one list")
    return chosen


@subscribers_app.command("show")
def subscribers_show(
    email: Annotated[str, typer.Argument(help="E-mail address.", show_default=False)],
    json: JsonOption = False,
    project: ProjectOption = None,
) -> None:
    """Show one subscriber: lists, statuses and the full consent history.

    Example: [bold]newsletter subscribers show anna@example.org[/bold]
    """
    from rich.table import Table

    from newsletter.audience.records import StoreError

    with opened(project) as store:
        found = store.find_subscriber(email)
        if found is None:
            suppressed = store.is_suppressed(email)
            raise StoreError(f"no subscriber {email.strip()}"
                             + (" (the address is on the suppression list)" if suppressed else ""))
        memberships = store.memberships(found.id)
        history = store.history(found.id)
    if json:
        print_json({
            "id": found.id, "email": found.email, "name": found.name,
            "attributes": found.attributes, "created_at": found.created_at,
            "lists": [{"list": m.list_name, "status": m.status, "created_at": m.created_at,
                       "updated_at": m.updated_at} for m in memberships],
            "history": [{"at": h.at, "list": h.list_name, "action": h.action, "source": h.source,
                         "ip": h.ip, "consent_version": h.consent_version, "detail": h.detail}
                        for h in history],
        })
        return
    console.print(f"{found.email}" + (f" — {found.name}" if found.name else ""), markup=False)
    console.print(f"subscriber #{found.id} since {found.created_at:%Y-%m-%d %H:%M} UTC", markup=False)
    for key, value in found.attributes.items():
        console.print(f"  {key}: {value}", markup=False)
    table = Table("list", "status", "since")
    for m in memberships:
        table.add_row(m.list_name, m.status, f"{m.updated_at:%Y-%m-%d %H:%M}")
    console.print(table)
    history_table = Table("at (UTC)", "list", "status", "source", "ip", "consent", "detail",
                          title="consent history")
    for h in history:
        history_table.add_row(f"{h.at:%Y-%m-%d %H:%M:%S}", h.list_name or "", h.action, h.source,
                              h.ip or "", h.consent_version or "", h.detail or "")
    console.print(history_table)
