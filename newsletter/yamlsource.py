"""Read YAML as plain data *with source positions*, without YAML 1.1 surprises.

We compose the YAML into nodes ourselves instead of letting a YAML library construct
Python objects: every scalar stays the text the editor wrote (pydantic converts it to
the type the schema wants), so ``18:00`` is never 1080, ``no`` is never False and
``2026-02-31`` is never silently shifted. Duplicate keys are errors. Every node's
position is kept, keyed by its path, for error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from newsletter.errors import IssueInvalid, Problem

Loc = tuple[str | int, ...]
# Plain (unquoted) scalars that mean "no value".
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")

try:  # the C composer is much faster; fall back to the pure-Python one.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]


@dataclass
class SourceMap:
    """Positions (1-based line, column) of values and keys in one YAML file."""

    file: str
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def locate(self, loc: Loc, *, key: bool = False) -> tuple[int | None, int | None]:
        """Best position for `loc`: the exact node, else its nearest existing parent."""
        table = self.keys if key else self.values
        if loc in table:
            return table[loc]
        for cut in range(len(loc) - 1, -1, -1):
            if loc[:cut] in self.values:
                return self.values[loc[:cut]]
        return (None, None)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(node: yaml.Node, loc: Loc, smap: SourceMap, problems: list[Problem]) -> Any:
    smap.values[loc] = _mark(node)
    if isinstance(node, yaml.ScalarNode):
        if node.style is None and _NULL.match(node.value):
            return None
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), smap, problems) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line, col = _mark(key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    Problem(smap.file, line, col, _dotted(loc), "a key must be plain text")
                )
                continue
            key = key_node.value
            if key == "<<":
                problems.append(
                    Problem(smap.file, line, col, _dotted(loc), "YAML merge keys (<<) are not supported")
                )
                continue
            if key in result:
                first = smap.keys[(*loc, key)]
                problems.append(
                    Problem(
                        smap.file, line, col, _dotted((*loc, key)),
                        f"duplicate key `{key}` (first given on line {first[0]})",
                    )
                )
                continue
            smap.keys[(*loc, key)] = (line, col)
            result[key] = _convert(value_node, (*loc, key), smap, problems)
        return result
    raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover


def _dotted(loc: Loc) -> str:
    """('sections', 0, 'items', 2, 'headline') -> 'sections[0].items[2].headline'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


dotted = _dotted


def read_yaml(path: Path, text: str | None = None) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain dicts/lists/strings plus its `SourceMap`.

    Raises `IssueInvalid` with every syntax problem located (FILE:LINE:COL).
    """
    file = str(path)
    if text is None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            problem = Problem(file, None, None, "", f"cannot read file: {exc.strerror}")
            raise IssueInvalid(problems=[problem]) from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise IssueInvalid(
                problems=[Problem(file, line, None, "", "file is not UTF-8 encoded; save it as UTF-8")]
            ) from None
    smap = SourceMap(file)
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark and "end of stream" in (exc.problem or ""):
            mark = exc.context_mark  # an unclosed quote: point at where it was opened
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{exc.context}, {message}"
        if "\t" in message or "'\\t'" in message or "tab" in message:
            message += " (indent with spaces, not tabs)"
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise IssueInvalid(problems=[Problem(file, line, col, "", f"YAML syntax error: {message}")]) from None
    except yaml.YAMLError as exc:  # e.g. a reader error for control characters
        raise IssueInvalid(problems=[Problem(file, None, None, "", f"YAML error: {exc}")]) from None
    if not nodes or nodes[0] is None:
        message = "the file is empty; an issue needs at least `subject`, `date` and `sections`"
        raise IssueInvalid(problems=[Problem(file, 1, 1, "", message)])
    if len(nodes) > 1:
        line, col = _mark(nodes[1])
        message = "more than one YAML document (`---`); put one issue per file"
        raise IssueInvalid(problems=[Problem(file, line, col, "", message)])
    problems: list[Problem] = []
    data = _convert(nodes[0], (), smap, problems)
    if problems:
        raise IssueInvalid(problems=problems)
    return data, smap
