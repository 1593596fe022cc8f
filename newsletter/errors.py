"""The project's one error hierarchy.

Every user-facing problem is a `Problem` with a source position, printed as
``FILE:LINE:COL: field.path: message``. Library functions raise `NewsletterError`
(or a subclass) carrying one or more problems; the CLI prints them and exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located as precisely as we can."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str
    severity: Severity = "error"

    def format(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = "warning: " if self.severity == "warning" else ""
        field_part = f"{self.path}: " if self.path else ""
        return f"{where}: {prefix}{field_part}{self.message}"

    def __str__(self) -> str:
        return self.format()


class NewsletterError(Exception):
    """Base class of every error meant to be shown to a user (exit code 1, no traceback)."""

    def __init__(self, message: str = "", problems: list[Problem] | None = None) -> None:
        self.problems: list[Problem] = list(problems or [])
        if not message and self.problems:
            message = "\n".join(p.format() for p in self.problems)
        super().__init__(message)
        self.message = message

    def lines(self) -> list[str]:
        """The message as printable lines, one per problem where there are problems."""
        if self.problems:
            return [p.format() for p in self.problems]
        return [self.message]


class IssueInvalid(NewsletterError):
    """An issue YAML file cannot be loaded or does not validate."""


class ConfigError(NewsletterError):
    """newsletter.toml (or the environment overriding it) is broken."""


class ProjectNotFound(NewsletterError):
    """No newsletter.toml in the given directory or any parent."""


class HeaderInjection(NewsletterError):
    """A value destined for a mail header contains CR, LF or another control character."""
