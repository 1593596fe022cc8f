"""CLI commands: `db status` and `db upgrade` over newsletter.db.status."""

from typing import Annotated

import typer

from newsletter.cli.common import JsonOption, ProjectOption, app, get_project, plain, print_json, user_errors

db_app = typer.Typer(help="The database: schema status and upgrade (SQLite or PostgreSQL).",
                     no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(db_app, name="db")


@db_app.command("status")
def db_status(
    project: ProjectOption = None,
    json_output: JsonOption = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 3 when migrations are pending (for deployment scripts).")] = False,
) -> None:
    """Show the database (password hidden), its schema version and the migrations pending.
    Changes nothing.

    Example: [bold]newsletter db status[/bold]
    """
    from newsletter.db.status import schema_status

    proj = get_project(project)
    with user_errors():
        status = schema_status(proj.database_url)
    if json_output:
        print_json(status.as_dict())
    else:
        plain(f"database: {status.url} ({status.backend})")
        if not status.exists:
            plain("not created yet: the first command that uses it (or `newsletter db upgrade`) "
                  "creates it")
        if status.newer:
            plain(f"schema version {status.version}, newer than this program ({status.target}): "
                  "upgrade newsletter on this machine")
        elif status.up_to_date:
            plain(f"schema version {status.version}: up to date")
        else:
            plain(f"schema version {status.version} of {status.target}; pending:")
            for version, description in status.pending:
                plain(f"  {version}: {description}")
            plain("run `newsletter db upgrade` to apply them")
    if status.newer:
        raise typer.Exit(1)
    if check and not status.up_to_date:
        raise typer.Exit(3)


@db_app.command("upgrade")
def db_upgrade(project: ProjectOption = None) -> None:
    """Apply the pending schema migrations, in one transaction (creates the database's tables
    when it is empty). Run once per deployment, before the new version starts on any machine.

    Example: [bold]newsletter db upgrade[/bold]
    """
    from newsletter.db.status import upgrade

    proj = get_project(project)
    with user_errors():
        applied = upgrade(proj.database_url)
    if not applied:
        plain("schema already up to date; nothing applied")
    for version, description in applied:
        plain(f"applied {version}: {description}")


@db_app.command("copy")
def db_copy(
    target: Annotated[str, typer.Argument(
        help="URL of an empty database, e.g. postgresql+psycopg://newsletter@db/newsletter.",
        show_default=False)],
    project: ProjectOption = None,
) -> None:
    """Copy the project's database, every row as it is, into an empty database — e.g. from
    SQLite to PostgreSQL. Unsubscribe links in mails already sent keep working (an export and
    import would not keep them). One transaction: a failed copy leaves the target empty. Stop
    `serve` and sends first; then point [database] url at the target.

    Example: [bold]newsletter db copy postgresql+psycopg://newsletter@localhost/newsletter[/bold]
    """
    from newsletter.db.copy import copy_database

    proj = get_project(project)
    with user_errors():
        result = copy_database(proj.database_url, target,
                               on_table=lambda name, rows: plain(f"{name}: {rows} rows"))
    plain(f"copied into {result.target}; now set [database] url to it (the password in .env: "
          "NEWSLETTER_DATABASE__URL)")
