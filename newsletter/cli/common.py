"""Shared pieces of the CLI: the typer app, the --project option, error handling."""

import atexit
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from newsletter.errors import NewsletterError
from newsletter.project import IssuePipeline, Project, open_project

app = typer.Typer(
    name="newsletter",
    help="Write newsletter issues as YAML, validate, build, preview and send them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)



PIPED_WIDTH = 10_000


class LazyConsole:
    """A rich Console made on first use, so that `--help` and `validate` start without rich's
    console machinery. `.rich` is the Console itself (for rich.progress)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    @property
    def rich(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
            if not self._console.is_terminal:
                # Piped or redirected: nothing to fit, so tables and paths are never wrapped or cut.
                self._console.width = PIPED_WIDTH
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)


console = LazyConsole(highlight=False)
err_console = LazyConsole(stderr=True, highlight=False)


def plain(text: str, *, err: bool = False) -> None:
    """One line as it is (no markup, never wrapped): file positions and addresses stay whole."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")

ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", "-p", help="Project directory (default: found upwards from here).",
                 envvar="NEWSLETTER_PROJECT", show_default=False),
]
IssueFile = Annotated[Path, typer.Argument(help="The issue file, e.g. issues/2026-02.yaml.",
                                           show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def fail(error: NewsletterError) -> NoReturn:
    """Print a user-facing error, one problem per line, and exit 1."""
    for line in error.lines():
        plain(line, err=True)
    raise typer.Exit(1) from None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's own errors into exit code 1 with a message."""
    try:
        yield
    except NewsletterError as error:
        fail(error)


def get_project(project: Path | None, *, near: Path | None = None) -> Project:
    """The project of a command (the one rule: `newsletter.project.locate_project`)."""
    with user_errors():
        return open_project(project, near=near)


def get_issue(file: Path, project: Path | None) -> IssuePipeline:
    """Open the issue file's project and load + validate the issue; print its warnings."""
    with user_errors():
        issue = open_project(project, near=file).issue(file)
    for warning in issue.warnings:
        plain(warning.format(), err=True)
    return issue


def relative(path: Path) -> str:
    """`path` relative to the current directory where it is below it, for shorter output."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def say(text: str, *, err: bool = False) -> None:
    """One line, never broken by rich (a subject or address stays whole when piped)."""
    (err_console if err else console).print(text, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def main() -> None:
    """The `newsletter` program: run the command, then leave without the interpreter's teardown.

    Freeing every module at exit costs ≈ 50 ms here — a fifth of a `newsletter validate` — and
    does nothing a finished command needs. So once the command is done, the atexit handlers
    have run and stdout/stderr are flushed, the process ends at once; unless another thread still
    runs, which the normal exit would wait for (bench/startup.py measures the difference)."""
    try:
        app()
        code: object = 0
    except SystemExit as done:
        code = done.code
    if threading.active_count() > 1:
        sys.exit(code)
    if not isinstance(code, int):
        if code is not None:
            sys.stderr.write(f"{code}\n")
        code = 0 if code is None else 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (e.g. `| head`): nothing more to say
            code = code or 1
    os._exit(code)


Command = Callable[..., Any]
