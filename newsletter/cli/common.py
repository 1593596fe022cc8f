"""Shared pieces of the CLI: the typer app, the --project option, error handling."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from newsletter.config import Project, load_project
from newsletter.errors import NewsletterError

app = typer.Typer(
    name="newsletter",
    help="Write newsletter issues as YAML, validate, build, preview and send them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", "-p", help="Project directory (default: found upwards from here).",
                 envvar="NEWSLETTER_PROJECT", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def fail(error: NewsletterError) -> NoReturn:
    """Print a user-facing error, one problem per line, and exit 1."""
    for line in error.lines():
        err_console.print(line, markup=False, soft_wrap=True)
    raise typer.Exit(1) from None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's own errors into exit code 1 with a message."""
    try:
        yield
    except NewsletterError as error:
        fail(error)


def get_project(project: Path | None) -> Project:
    with user_errors():
        return load_project(project)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def main() -> None:
    app()


Command = Callable[..., Any]
