"""`newsletter init` and `newsletter new`: create a project and new issue files."""

from __future__ import annotations

import shutil
from datetime import date
from importlib import resources
from pathlib import Path

from newsletter.errors import NewsletterError
from newsletter.project import CONFIG_NAME

SKELETON = "skeleton"

MODELINE = "# yaml-language-server: $schema=../issue.schema.json\n"

# The top of every new issue: the placeholders the editor replaces (subject, preheader, intro).
NEW_ISSUE_HEAD = """\
subject: "Newsletter {month}"
preheader: Worum es in dieser Ausgabe geht
date: {date}
intro: |
  Liebe Leserinnen und Leser,

"""

# The example section of an issue started without feeds (and of a draft whose feeds had nothing).
NEW_ISSUE_SECTIONS = """\
sections:
  - kind: digest
    heading: Smart zu wissen
    items:
      - headline: Überschrift der ersten Meldung
        body: |
          Text der Meldung mit **fetten** Worten und [Links](https://example.org).
        links:
          - label: Alle Informationen
            url: https://example.org/
"""

MONTHS = ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
          "Oktober", "November", "Dezember")


def init_project(directory: Path) -> list[Path]:
    """Copy the packaged project skeleton into `directory`; never overwrite anything."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CONFIG_NAME).exists():
        raise NewsletterError(f"{directory / CONFIG_NAME} already exists; not overwriting it")
    skeleton = resources.files("newsletter") / SKELETON
    created: list[Path] = []
    with resources.as_file(skeleton) as source:
        for path in sorted(source.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            target = directory / path.relative_to(source)
            if path.is_dir():
                target.mkdir(exist_ok=True)
                continue
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            created.append(target)
    (directory / "templates").mkdir(exist_ok=True)
    return created


def issue_head(when: date, comment: str = "") -> str:
    """The start of a new issue dated `when`: the modeline, `comment` (lines starting with `#`)
    and the placeholders for subject, preheader, date and intro; `sections:` follows."""
    head = NEW_ISSUE_HEAD.format(month=f"{MONTHS[when.month - 1]} {when.year}", date=when.isoformat())
    return MODELINE + comment + head


def new_issue(directory: Path, when: date, text: str | None = None) -> Path:
    """Write a new issue `directory/YYYY-MM.yaml` (or -2, -3 … if taken): `text`, or by default
    the skeleton. Never overwrites a file, not even one created meanwhile by someone else."""
    directory.mkdir(parents=True, exist_ok=True)
    if text is None:
        text = issue_head(when) + NEW_ISSUE_SECTIONS
    stem = f"{when:%Y-%m}"
    path = directory / f"{stem}.yaml"
    n = 2
    while True:
        try:
            with path.open("x", encoding="utf-8") as file:  # exclusive: fails if it exists
                file.write(text)
            return path
        except FileExistsError:
            path = directory / f"{stem}-{n}.yaml"
            n += 1
