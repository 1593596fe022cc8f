"""`newsletter init` and `newsletter new`: create a project and new issue files."""

from __future__ import annotations

import shutil
from datetime import date
from importlib import resources
from pathlib import Path

from newsletter.errors import NewsletterError
from newsletter.project import CONFIG_NAME

SKELETON = "skeleton"

NEW_ISSUE = """\
# yaml-language-server: $schema=../issue.schema.json
subject: "Newsletter {month}"
preheader: Worum es in dieser Ausgabe geht
date: {date}
intro: |
  Liebe Leserinnen und Leser,

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


def new_issue(directory: Path, when: date) -> Path:
    """Write a skeleton issue `directory/YYYY-MM.yaml` (or -2, -3 … if taken)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{when:%Y-%m}"
    path = directory / f"{stem}.yaml"
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}.yaml"
        n += 1
    months = ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August",
              "September", "Oktober", "November", "Dezember"]
    text = NEW_ISSUE.format(month=f"{months[when.month - 1]} {when.year}", date=when.isoformat())
    path.write_text(text, encoding="utf-8")
    return path
