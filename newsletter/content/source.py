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
    # Literal block scalars (`|`): their text maps line by line onto the file.
    literal: set[Loc] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)

    def locate_in_text(self, loc: Loc, line_in_value: int) -> tuple[int | None, int | None]:
        """Position of line `line_in_value` (0-based) inside the text value at `loc`.

        Exact for literal blocks (`body: |`); anything else folds lines, so it
        falls back to the value's own position.
        """
        line, col = self.locate(loc)
        if loc not in self.literal or line is None:
            return line, col
        number = line + 1 + line_in_value  # the text starts on the line after `|`
        if number > len(self.lines):
            return line, col
        text = self.lines[number - 1]
        return number, len(text) - len(text.lstrip()) + 1

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
        if node.style == "|":
            smap.literal.add(loc)
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


def _syntax_problem(exc: yaml.MarkedYAMLError) -> tuple[int | None, int | None, str]:
    """Where a YAML syntax error is and what to do about it, in an editor's words."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "invalid YAML"
    context = exc.context or ""
    if "quoted scalar" in context and "end of stream" in problem and exc.context_mark:
        mark = exc.context_mark  # point at where the unclosed quote was opened
        message = "the quote opened here is never closed; add the closing quote"
    elif "tab" in problem or "\t" in problem or "\\t" in problem:
        message = "a tab character here; indent with spaces, not tabs"
    elif "mapping values are not allowed" in problem:
        message = ("unexpected `:` here; check this line's indentation, or put text "
                   "that contains `: ` in quotes")
    elif "expected key" in problem or "expected <block end>" in problem or "expected '-'" in problem:
        message = (f"{context}, {problem}: check the indentation (keys of one mapping and "
                   "the `- ` items of one list must start in the same column)")
    else:
        message = f"{context}, {problem}" if context else problem
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return line, col, message


def _refuse_aliases(text: str, file: str) -> None:
    """Anchors and aliases (`&a`, `*a`) are refused before anything is built: an issue needs
    none, and nested aliases expand exponentially (a few lines become gigabytes). The parser's
    events cost time linear in the text, whatever the aliases would expand to."""
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            message = ("YAML anchors and aliases (`&name`, `*name`) are not supported in an issue "
                       "file; write the value out where it is needed")
            raise IssueInvalid(problems=[Problem(file, mark.line + 1, mark.column + 1, "", message)])


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
            line_start = raw.rfind(b"\n", 0, exc.start) + 1
            line = raw[: exc.start].count(b"\n") + 1
            col = len(raw[line_start : exc.start].decode("utf-8", errors="replace")) + 1
            message = (f"the file is not UTF-8 encoded (byte 0x{raw[exc.start]:02x} here); "
                       "save it as UTF-8")
            raise IssueInvalid(problems=[Problem(file, line, col, "", message)]) from None
    smap = SourceMap(file, lines=text.splitlines())
    try:
        _refuse_aliases(text, file)
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        line, col, message = _syntax_problem(exc)
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
