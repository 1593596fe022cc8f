"""Load an issue file and validate it, reporting every problem with FILE:LINE:COL.

`load_issue` is the one entry point: YAML (via `yamlsource`, positions kept) →
pydantic models (`model`) → semantic checks that span fields (end before start,
alt text that is a file name, …) → warnings (long subject, …).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from newsletter import model
from newsletter.errors import IssueInvalid, Problem
from newsletter.model import Image, Issue
from newsletter.yamlsource import Loc, SourceMap, dotted, read_yaml

SUBJECT_MAX = 78
PREHEADER_MAX = 140


@dataclass
class LoadedIssue:
    """A valid issue, where it came from, and the warnings it raised."""

    issue: Issue
    path: Path
    source: SourceMap
    warnings: list[Problem] = field(default_factory=list)


def load_issue(path: str | Path, *, strict: bool = False) -> LoadedIssue:
    """Read and validate one issue file.

    Raises `IssueInvalid` carrying every error (and, with ``strict``, every warning
    as an error). Returns the issue with its remaining warnings otherwise.
    """
    path = Path(path)
    data, smap = read_yaml(path)
    if not isinstance(data, dict):
        line, col = smap.locate(())
        raise IssueInvalid(
            problems=[Problem(smap.file, line, col, "", "an issue must be a mapping of keys "
                              "(`subject:`, `date:`, `sections:` …), not a list or text")]
        )
    if data.get("slug") is None and "slug" not in data:
        data["slug"] = _slug_from_filename(path)
    try:
        issue = Issue.model_validate(data)
    except ValidationError as exc:
        raise IssueInvalid(problems=_pydantic_problems(exc, data, smap)) from None
    problems = list(_semantic_problems(issue, smap))
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if strict:
        errors += [Problem(p.file, p.line, p.column, p.path, p.message) for p in warnings]
        warnings = []
    if errors:
        raise IssueInvalid(problems=sorted(errors, key=_position))
    return LoadedIssue(issue=issue, path=path, source=smap, warnings=warnings)


def _slug_from_filename(path: Path) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")
    return slug or "issue"


def _position(p: Problem) -> tuple[int, int]:
    return (p.line or 0, p.column or 0)


# --------------------------------------------------------------------------- pydantic errors

_ALL_MODELS: list[type[BaseModel]] = [
    obj for obj in vars(model).values()
    if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.model_fields
]


def _data_loc(raw: tuple[Any, ...], data: Any) -> Loc:
    """Drop the parts of a pydantic error location that are not keys in the data
    (union member names, discriminator tags, validator names)."""
    loc: list[str | int] = []
    node = data
    after_index = False
    for part in raw:
        if after_index and isinstance(node, dict) and part == _tag_of(node):
            after_index = False  # the discriminator tag pydantic inserts after a list index
            continue
        after_index = False
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            loc.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            loc.append(part)
            node = node[part]
            after_index = True
        elif isinstance(node, dict) and isinstance(part, str) and not _is_internal(part):
            loc.append(part)  # a missing or unknown key: keep it, it names the field
            node = None
    return tuple(loc)


def _tag_of(node: dict[str, Any]) -> str | None:
    kind = node.get("kind")
    return kind if isinstance(kind, str) else model._block_kind(node)


def _is_internal(part: str) -> bool:
    return "[" in part or part in ("str", "int", "date", "time", "none", "function-after",
                                   "function-before")


def _closest_key(key: str, siblings: dict[str, Any]) -> str | None:
    """The most likely intended key: compare with the fields of the model that best
    matches the other keys given beside it."""
    present = set(siblings) - {key}
    best = max(_ALL_MODELS, key=lambda m: len(present & set(m.model_fields)), default=None)
    names = list(best.model_fields) if best is not None and present & set(best.model_fields) else []
    if not names:
        names = sorted({n for m in _ALL_MODELS for n in m.model_fields})
    candidates = [n for n in names if n not in present]
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _pydantic_problems(exc: ValidationError, data: Any, smap: SourceMap) -> list[Problem]:
    problems: dict[tuple[Loc, str], Problem] = {}
    for err in exc.errors(include_url=False):
        loc = _data_loc(err["loc"], data)
        kind = err["type"]
        message = err["msg"].removeprefix("Value error, ")
        line, col = smap.locate(loc)
        if kind == "extra_forbidden":
            key = str(loc[-1])
            message = f"unknown key `{key}`"
            suggestion = _closest_key(key, _get(data, loc[:-1]) or {})
            if suggestion:
                message += f", did you mean `{suggestion}`?"
            line, col = smap.locate(loc, key=True)
        elif kind == "missing":
            message = f"missing required key `{loc[-1]}`"
        elif kind == "union_tag_invalid":
            tag = err["ctx"]["tag"]
            expected = err["ctx"]["expected_tags"].replace("'", "")
            loc = (*loc, "kind")
            line, col = smap.locate(loc)
            match = difflib.get_close_matches(tag, model.SECTION_KINDS, n=1)
            message = f"unknown section kind `{tag}`" + (
                f", did you mean `{match[0]}`?" if match else f"; use one of {expected}"
            )
        elif kind == "union_tag_not_found":
            message = f"missing `kind`: one of {', '.join(model.SECTION_KINDS)}"
        elif kind == "model_type" or kind == "dict_type":
            message = "expected a mapping of keys here (`key: value`), not " + _describe(_get(data, loc))
        elif kind == "list_type":
            message = "expected a list here (lines starting with `- `), not " + _describe(_get(data, loc))
        elif kind == "string_type":
            message = "expected text here, not " + _describe(_get(data, loc))
        elif kind == "too_short" and isinstance(_get(data, loc), list):
            message = "the list must not be empty"
        elif kind == "string_pattern_mismatch" and loc[-1:] == ("slug",):
            message = "use lower-case letters, digits and dashes only, e.g. `2026-02`"
        key = (loc, message)
        problems.setdefault(key, Problem(smap.file, line, col, dotted(loc), message))
    return sorted(problems.values(), key=_position)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"the text `{value}`"


# --------------------------------------------------------------------------- semantic checks

_FILE_NAME = re.compile(r"^[\w\-.]+\.(?:jpe?g|png|gif|webp|svg|avif|tiff?)$", re.IGNORECASE)


def _walk(obj: Any, loc: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    yield loc, obj
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk(getattr(obj, name), (*loc, name))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _walk(item, (*loc, i))


def _semantic_problems(issue: Issue, smap: SourceMap) -> Iterator[Problem]:
    def problem(loc: Loc, message: str, severity: str = "error") -> Problem:
        line, col = smap.locate(loc)
        return Problem(smap.file, line, col, dotted(loc), message, severity)  # type: ignore[arg-type]

    if len(issue.subject) > SUBJECT_MAX:
        yield problem(("subject",), f"the subject has {len(issue.subject)} characters; mail "
                      f"clients cut it off after about {SUBJECT_MAX}", "warning")
    if issue.preheader is None:
        yield problem(("subject",), "no `preheader`: mail clients will show the first text "
                      "of the email as the preview line instead", "warning")
    elif len(issue.preheader) > PREHEADER_MAX:
        yield problem(("preheader",), f"the preheader has {len(issue.preheader)} characters; "
                      f"only about {PREHEADER_MAX} are shown", "warning")
    for loc, obj in _walk(issue):
        if isinstance(obj, Image):
            if _FILE_NAME.match(obj.alt):
                yield problem((*loc, "alt"), f"alt text `{obj.alt}` is a file name; describe "
                              "what the image shows")
            if (obj.width is None) != (obj.height is None):
                yield problem((*loc, "width" if obj.width else "height"),
                              "give both `width` and `height` of the image, or neither")
            elif obj.width is None:
                yield problem((*loc, "url"), "image without `width` and `height`: the layout may "
                              "jump while it loads", "warning")
        elif isinstance(obj, model.Event):
            if obj.end is not None and obj.end < obj.date:
                yield problem((*loc, "end"), f"the event ends ({obj.end:%d.%m.%Y}) before it "
                              f"starts ({obj.date:%d.%m.%Y})")
            if obj.end_time is not None and obj.time is None:
                yield problem((*loc, "end_time"), "an `end_time` needs a start `time`")
            elif (
                obj.end_time is not None and obj.time is not None
                and (obj.end is None or obj.end == obj.date) and obj.end_time <= obj.time
            ):
                yield problem((*loc, "end_time"), f"the event ends ({obj.end_time:%H:%M}) before "
                              f"it starts ({obj.time:%H:%M})")
        elif isinstance(obj, model.DigestItem) and not (obj.headline or obj.body):
            yield problem(loc, "an item needs a `headline` or a `body`")
