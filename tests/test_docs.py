"""Every command is documented: in the README and with an example in its --help."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from newsletter.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _commands() -> list[tuple[str, Any]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, Any]] = []

    def walk(prefix: str, command: Any) -> None:
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            found.append((prefix, command))

    walk("", root)
    return found


COMMANDS = _commands()


def test_there_are_commands() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"validate", "schema", "init", "new"} <= names


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_is_in_readme(name: str, command: Any) -> None:
    assert re.search(rf"newsletter {re.escape(name)}\b", README), f"`newsletter {name}` not in README"


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_help_has_example(name: str, command: Any) -> None:
    assert "Example:" in (command.help or ""), f"`newsletter {name} --help` has no example"
    assert f"newsletter {name}" in (command.help or "")


def test_quick_start_has_exactly_two_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", section, re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) == 2, lines
