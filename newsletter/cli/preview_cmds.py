"""CLI commands: preview (a local web page with live reload, and the outbox)."""

from pathlib import Path
from typing import Annotated

import typer

from newsletter.cli.common import ProjectOption, app, console, get_project, user_errors


@app.command()
def preview(
    file: Annotated[Path, typer.Argument(help="The issue file to preview.", show_default=False)],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = 8025,
    no_open: Annotated[bool, typer.Option("--no-open", help="Do not open a browser.")] = False,
    sample: Annotated[str | None, typer.Option(
        "--as", help="Show the copy of this subscriber (greeting, personal fields); default: a "
                     "made-up reader, Erika Mustermann.", show_default=False)] = None,
    project: ProjectOption = None,
) -> None:
    """Preview an issue in the browser: desktop, phone, plain text, headers; reloads on every save.

    Also lists the local outbox (what `send` delivered without SMTP) at /outbox.
    Stop with Ctrl-C.

    Example: [bold]newsletter preview issues/2026-02.yaml --as anna.schmidt@example.org[/bold]
    """
    from newsletter.web.preview import run_preview  # the web stack loads only for this command

    loaded = get_project(project, near=file)

    def announce(url: str) -> None:
        console.print(f"Preview of {file} at {url}  (outbox: {url}outbox; Ctrl-C to stop)",
                      markup=False, soft_wrap=True)
        console.file.flush()

    with user_errors():
        run_preview(loaded, file, port=port, open_browser=not no_open, announce=announce, sample=sample)
