"""Topics on sections (docs/topics.md): which sections a member's choice of topics keeps, and
the topic keys of an issue that newsletter.toml does not declare.

A section without `topics` goes to everybody; a section with topics goes to the members who
chose at least one of them, and to every member who chose nothing (NULL: everything). A
*selection* is the tuple of the indexes of the sections kept: members with the same selection
get the same mail, whatever their choices look like (the send renders once per selection).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from newsletter.content.model import Issue
from newsletter.content.source import SourceMap, dotted
from newsletter.errors import Problem, Severity

Selection = tuple[int, ...]


def used_topics(issue: Issue) -> frozenset[str]:
    """Every topic key some section of the issue carries."""
    return frozenset(key for section in issue.sections for key in section.topics)


def selection(issue: Issue, chosen: Collection[str] | None) -> Selection:
    """The indexes of the sections a member with the topics `chosen` gets (None: no choice,
    every section)."""
    if chosen is None:
        return tuple(range(len(issue.sections)))
    return tuple(i for i, section in enumerate(issue.sections)
                 if not section.topics or any(key in chosen for key in section.topics))


def selected(issue: Issue, indexes: Selection) -> Issue:
    """The issue with only the sections at `indexes`. A copy without validation: the sections
    are the same objects (so the full issue's .ics files still match its events)."""
    return issue.model_copy(update={"sections": [issue.sections[i] for i in indexes]})


def _raw_tags(data: Any) -> Iterator[tuple[int, int, str]]:
    """(section index, index in its `topics`, key) of the raw YAML data (before validation, so
    a file with errors still gets these warnings)."""
    sections = data.get("sections") if isinstance(data, dict) else None
    for i, section in enumerate(sections if isinstance(sections, list) else []):
        keys = section.get("topics") if isinstance(section, dict) else None
        for j, key in enumerate(keys if isinstance(keys, list) else []):
            if isinstance(key, str):
                yield i, j, key.strip()


def issue_tags(issue: Issue) -> Iterator[tuple[int, int, str]]:
    """(section index, index in its `topics`, key) of a validated issue."""
    for i, section in enumerate(issue.sections):
        for j, key in enumerate(section.topics):
            yield i, j, key


def undeclared(tags: Iterable[tuple[int, int, str]], smap: SourceMap, declared: Collection[str],
               where: str, severity: Severity) -> list[Problem]:
    """One problem per use of a key not in `declared`, at its FILE:LINE:COL. `where` says what
    was looked in, e.g. "for the list `news` (`[topics.news]` in newsletter.toml)"."""
    known = sorted(declared)
    listed = ", ".join(f"`{k}`" for k in known) if known else "none"
    problems = []
    for i, j, key in tags:
        if key in declared:
            continue
        loc = ("sections", i, "topics", j)
        line, column = smap.locate(loc)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        problems.append(Problem(smap.file, line, column, dotted(loc),
                                f"topic `{key}` is not declared {where} (declared: {listed}){hint}",
                                severity))
    return problems


def raw_warnings(data: Any, smap: SourceMap, declared: Collection[str]) -> list[Problem]:
    """`validate`'s warnings: keys that no `[topics.<list>]` of the project declares."""
    return undeclared(_raw_tags(data), smap, declared,
                      "by any `[topics.<list>]` in newsletter.toml", "warning")
