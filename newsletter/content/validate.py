"""Load an issue file and validate it, reporting every problem with FILE:LINE:COL.

`load_issue` is the one entry point: YAML (via `yamlsource`, positions kept) →
pydantic models (`model`, including the checks that span fields such as end before
start) → warnings (long subject, …). Pydantic's error locations are mapped back to
the YAML keys, so each problem points at the offending value (or, for an unknown
key, at the key) and an unknown key gets the closest key allowed at that place.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from newsletter.content import model
from newsletter.content.images import file_problem, is_local, local_path_error
from newsletter.content.model import Image, Issue
from newsletter.content.source import Loc, SourceMap, dotted, read_yaml
from newsletter.content.topics import raw_warnings
from newsletter.errors import IssueInvalid, Problem

SUBJECT_MAX = 78
PREHEADER_MAX = 140


@dataclass
class LoadedIssue:
    """A valid issue, where it came from, and the warnings it raised."""

    issue: Issue
    path: Path
    source: SourceMap
    warnings: list[Problem] = field(default_factory=list)


def load_issue(path: str | Path, *, strict: bool = False,
               topics: Collection[str] | None = None, root: Path | None = None) -> LoadedIssue:
    """Read and validate one issue file.

    Raises `IssueInvalid` carrying every error (and, with ``strict``, every warning
    as an error). Returns the issue with its remaining warnings otherwise. `topics`: the topic
    keys the project declares (every `[topics.<list>]`); a section's key outside them is a
    warning (None: not checked, e.g. no project around the file). `root`: the project directory,
    which a local image's path may not leave (None: not checked here; rendering checks it).
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
    # Warnings come from the raw data, so a file with errors shows its warnings too.
    warnings = list(_semantic_problems(data, smap))
    if topics is not None:
        warnings += raw_warnings(data, smap, topics)
    errors = list(_local_image_problems(data, smap, path, root))
    try:
        issue = Issue.model_validate(data)
    except ValidationError as exc:
        errors += _pydantic_problems(exc, data, smap)
        errors += _cross_field_problems(exc, data, smap, errors)
    if strict:
        errors += [Problem(p.file, p.line, p.column, p.path, p.message) for p in warnings]
        warnings = []
    if errors:
        raise IssueInvalid(problems=sorted(errors + warnings, key=_position))
    return LoadedIssue(issue=issue, path=path, source=smap, warnings=warnings)


def _slug_from_filename(path: Path) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")
    return slug or "issue"


def _position(p: Problem) -> tuple[int, int]:
    return (p.line or 0, p.column or 0)


# --------------------------------------------------------------------------- pydantic errors

# Lists whose items are a discriminated union: pydantic puts the chosen tag into
# the error location right after the item index.
_TAGGED_LISTS = {"sections": lambda node: node.get("kind"), "blocks": model._block_kind}


def _data_loc(raw: tuple[Any, ...], data: Any) -> Loc:
    """Drop the parts of a pydantic error location that are not keys in the data
    (union member names, discriminator tags, validator names)."""
    loc: list[str | int] = []
    node = data
    tag_of = None
    for part in raw:
        if tag_of is not None and isinstance(node, dict) and part == tag_of(node):
            tag_of = None
            continue
        tag_of = None
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            loc.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            tag_of = _TAGGED_LISTS.get(str(loc[-1])) if loc else None
            loc.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and _is_field(part, tuple(loc), data):
            loc.append(part)  # a missing key: keep it, it names the field
            node = None
    return tuple(loc)


def _is_field(part: str, loc: Loc, data: Any) -> bool:
    """Whether `part` of an error location is a key of the model at `loc` (and not
    a union member or validator name pydantic puts into locations)."""
    m = _model_at(loc, data)
    if m is None:
        return "[" not in part
    return part in m.model_fields or part in _keys(m)


def _resolve(tp: Any, node: Any) -> Any:
    """Strip Annotated/Optional from a type; pick the union member the data means."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            members = [_resolve(a, node) for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                return members[0]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            return _pick(models, node)
        else:
            return tp


def _pick(models: list[type[BaseModel]], node: Any) -> type[BaseModel] | None:
    if not models or not isinstance(node, dict):
        return None
    kind = node.get("kind")
    for m in models:
        field = m.model_fields.get("kind")
        if field is not None and kind in get_args(field.annotation):
            return m
    return max(models, key=lambda m: len(set(node) & set(_keys(m))))


def _keys(m: type[BaseModel]) -> list[str]:
    """The YAML keys of a model (aliases where they differ from the field name)."""
    return [f.alias or name for name, f in m.model_fields.items()]


def _model_at(loc: Loc, data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc` of the raw data."""
    tp: Any = Issue
    node = data
    for part in loc:
        tp = _resolve(tp, node)
        if isinstance(part, int):
            if get_origin(tp) is not list:
                return None
            tp = get_args(tp)[0]
        else:
            if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
                return None
            field = next((f for name, f in tp.model_fields.items() if part in (name, f.alias)), None)
            if field is None:
                return None
            tp = field.annotation
        node = _get(node, (part,))
    tp = _resolve(tp, node)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


# German words and near-synonyms an editor may try, with the key meant.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "title": ("subject", "heading", "headline"), "titel": ("title", "subject", "heading", "headline"),
    "betreff": ("subject",), "datum": ("date",), "bild": ("image",), "text": ("body",),
    "inhalt": ("body",), "beschreibung": ("body", "teaser"), "description": ("body", "teaser"),
    "überschrift": ("headline", "heading"), "ueberschrift": ("headline", "heading"),
    "ort": ("venue", "address"), "adresse": ("address",), "ende": ("end",), "bis": ("end",),
    "zeit": ("time",), "uhrzeit": ("time",), "anmeldung": ("register",), "registration": ("register",),
    "bildunterschrift": ("caption",), "quelle": ("credit",), "copyright": ("credit",),
    "autor": ("author",), "href": ("url",), "link": ("url",), "alttext": ("alt",),
    "untertitel": ("preheader", "kicker"), "subtitle": ("preheader", "kicker"), "typ": ("kind",),
    "type": ("kind",), "hinweis": ("note",), "zitat": ("quote",), "von": ("by",),
}


def _closest_key(key: str, candidates: list[str]) -> str | None:
    """The most likely intended key among the keys allowed (and not yet given) here."""
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    for synonym in _SYNONYMS.get(key.lower(), ()):
        if synonym in candidates:
            return synonym
    match = difflib.get_close_matches(key.lower(), candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_key(key: str, parent: Loc, data: Any) -> tuple[str, str | None]:
    """Message for an unknown key, and the key it probably means."""
    siblings = _get(data, parent) or {}
    m = _model_at(parent, data)
    if m is None:
        return f"unknown key `{key}`", None
    candidates = [k for k in _keys(m) if k not in siblings]
    suggestion = _closest_key(key, candidates)
    if suggestion:
        return f"unknown key `{key}`, did you mean `{suggestion}`?", suggestion
    allowed = ", ".join(f"`{k}`" for k in _keys(m))
    return f"unknown key `{key}`; the keys allowed here are {allowed}", None


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _pydantic_problems(exc: ValidationError, data: Any, smap: SourceMap) -> list[Problem]:
    problems: dict[tuple[Loc, str], Problem] = {}
    meant: set[Loc] = set()  # keys an unknown key probably stands for
    for err in exc.errors(include_url=False):
        loc = _data_loc(err["loc"], data)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        message = err["msg"].removeprefix("Value error, ")
        line, col = smap.locate(loc)
        if kind == "extra_forbidden":
            message, suggestion = _unknown_key(str(loc[-1]), loc[:-1], data)
            if suggestion:
                meant.add((*loc[:-1], suggestion))
            line, col = smap.locate(loc, key=True)
        elif kind == "missing":
            message = f"missing required key `{loc[-1]}`"
        elif kind == "field_check":
            loc = (*loc, ctx["field"])
            line, col = smap.locate(loc)
        elif kind == "markdown":
            line, col = smap.locate_in_text(loc, ctx["line"])
        elif kind == "union_tag_invalid":
            tag = ctx["tag"]
            loc = (*loc, "kind")
            line, col = smap.locate(loc)
            match = difflib.get_close_matches(tag, model.SECTION_KINDS, n=1)
            message = f"unknown section kind `{tag}`" + (
                f", did you mean `{match[0]}`?" if match else f"; use one of {', '.join(model.SECTION_KINDS)}"
            )
        elif kind == "union_tag_not_found":
            message = f"missing `kind`: one of {', '.join(model.SECTION_KINDS)}"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            message = "expected a mapping of keys here (`key: value`), not " + _describe(_get(data, loc))
        elif kind == "list_type":
            message = "expected a list here (lines starting with `- `), not " + _describe(_get(data, loc))
        elif kind == "string_type":
            message = "expected text here, not " + _describe(_get(data, loc))
        elif kind == "int_parsing":
            message = "expected a whole number here, not " + _describe(_get(data, loc))
        elif kind == "too_short" and isinstance(_get(data, loc), list):
            message = "the list must not be empty"
        elif kind == "string_pattern_mismatch" and loc[-1:] == ("slug",):
            message = (f"`{_get(data, loc)}` is not a valid slug; use lower-case letters, digits "
                       "and dashes only, e.g. `2026-02`")
        key = (loc, message)
        problems.setdefault(key, Problem(smap.file, line, col, dotted(loc), message))
    # "unknown key `titel`, did you mean `title`?" already says what "missing `title`" would.
    result = [p for (loc, message), p in problems.items()
              if not (loc in meant and message.startswith("missing required key"))]
    return sorted(result, key=_position)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"the text `{value}`"


# --------------------------------------------------------------------------- warnings


def _walk(data: Any, loc: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    """Every mapping of the raw data with its location."""
    if isinstance(data, dict):
        yield loc, data
        for key, value in data.items():
            yield from _walk(value, (*loc, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _walk(item, (*loc, i))


def _cross_field_problems(exc: ValidationError, data: Any, smap: SourceMap,
                          reported: list[Problem]) -> list[Problem]:
    """The checks across fields of an object (a model's "after" validators, e.g. an event's
    `end_time` before its `time`) that pydantic skipped because another field of the object (or
    of an object inside it) was wrong: run on the fields that are valid on their own."""
    failed: set[Loc] = set()
    for err in exc.errors(include_url=False):
        loc = _data_loc(err["loc"], data)
        failed.update(loc[:cut] for cut in range(len(loc)))  # every object around the error
    problems = []
    seen = {(p.path, p.message) for p in reported}
    for loc in sorted(failed, key=len):
        cls, raw = _model_at(loc, data), _get(data, loc)
        checks = [d.func for d in cls.__pydantic_decorators__.model_validators.values()
                  if d.info.mode == "after"] if cls is not None and isinstance(raw, dict) else []
        if not checks:
            continue
        assert cls is not None
        valid, invalid = _split_fields(cls, raw)
        partial = cls.model_construct(**valid)
        for name in invalid:  # given but wrong: a check that reads it must not see a default
            partial.__dict__.pop(name, None)
        for check in checks:
            try:
                check(partial)
            except AttributeError:
                continue  # the check needs a field that is wrong itself: reported already
            except PydanticCustomError as error:
                field = (error.context or {}).get("field")
                where = (*loc, field) if field else loc
                message = error.message()
            except ValueError as error:
                where, message = loc, str(error)
            else:
                continue
            line, col = smap.locate(where)
            if (dotted(where), message) not in seen:
                problems.append(Problem(smap.file, line, col, dotted(where), message))
    return problems


def _split_fields(cls: type[BaseModel], raw: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The fields of `raw` that validate on their own (as the model would hold them), and the
    names of those given that do not."""
    valid, invalid = {}, set()
    for name, info in cls.model_fields.items():
        key = info.alias or name
        if key not in raw:
            continue
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        try:
            valid[name] = TypeAdapter(annotation).validate_python(raw[key])
        except ValidationError:
            invalid.add(name)
    return valid, invalid


def _semantic_problems(data: Any, smap: SourceMap) -> Iterator[Problem]:
    """Warnings, from the raw data (errors that span fields are model validators)."""

    def problem(loc: Loc, message: str, severity: str = "warning") -> Problem:
        line, col = smap.locate(loc)
        return Problem(smap.file, line, col, dotted(loc), message, severity)  # type: ignore[arg-type]

    def text(key: str) -> str | None:
        value = data.get(key) if isinstance(data, dict) else None
        return value.strip() if isinstance(value, str) else None

    subject, preheader = text("subject"), text("preheader")
    if subject is not None and len(subject) > SUBJECT_MAX:
        yield problem(("subject",), f"the subject has {len(subject)} characters; mail "
                      f"clients cut it off after about {SUBJECT_MAX}")
    if subject is not None and not preheader:
        yield problem(("subject",), "no `preheader`: mail clients will show the first text "
                      "of the email as the preview line instead")
    elif preheader is not None and len(preheader) > PREHEADER_MAX:
        yield problem(("preheader",), f"the preheader has {len(preheader)} characters; "
                      f"only about {PREHEADER_MAX} are shown")
    for loc, obj in _walk(data):
        if _model_at(loc, data) is Image and obj.get("width") is None and obj.get("height") is None \
                and not _local_url(obj):  # a local image's size is measured by `build`
            yield problem((*loc, "url"), "image without `width` and `height`: the layout may "
                          "jump while it loads")


def _local_url(obj: dict[str, Any]) -> str | None:
    """The image's `url` if it is a well-spelt local path (a misspelt one is the model's error)."""
    url = obj.get("url")
    if isinstance(url, str) and url.strip() and is_local(url) and local_path_error(url.strip()) is None:
        return url
    return None


def _local_image_problems(data: Any, smap: SourceMap, path: Path, root: Path | None) -> Iterator[Problem]:
    """Local images whose file is missing, outside the project or not an image (errors)."""
    for loc, obj in _walk(data):
        url = _local_url(obj) if _model_at(loc, data) is Image else None
        message = file_problem(url, path, root) if url is not None else None
        if message is not None:
            line, col = smap.locate((*loc, "url"))
            yield Problem(smap.file, line, col, dotted((*loc, "url")), message)
