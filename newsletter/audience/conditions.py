"""The condition language of segments (`where` in `[segments.<name>]`, docs/segments.md):

    Kommune = "Jena" and Rolle in ["Verwaltung", "Politik"] and joined < "2026-01-01"

A condition is read by Python's own tokenizer and parser, never evaluated: `tokenize` turns a
lone `=` into `==` (strings are tokens, so `=` inside them is untouched), `ast.parse(mode="eval")`
parses, and `_Builder` accepts a short whitelist of nodes — `and` / `or` / `not`, comparisons,
string and number literals, lists of them, names, `attr("…")` — each becoming a SQLAlchemy
expression with bound parameters. No SQL is made of the text. Every mistake is a fault at the
character offset of the offending token (`segments.py` turns it into newsletter.toml's
FILE:LINE:COL).

Comparisons are two-valued: a subscriber without the attribute (or a number comparison with a
value that is no number) matches neither `=` nor `in` nor `<` …, and does match `!=` and
`not in`, so `not (A = "x")` is exactly `A != "x"`.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from newsletter.audience.tables import memberships, subscribers
from newsletter.db.schema import by_code_point

BUILTINS = ("email", "domain", "name", "joined", "created")
MAX_LENGTH = 10_000
MAX_DEPTH = 50  # and / or / not inside each other
EXAMPLE = 'e.g. Kommune = "Jena" and Rolle in ["Verwaltung", "Politik"]'


class ConditionError(ValueError):
    """A `where` that is not a condition: (character offset in the `where`, message) per fault."""

    def __init__(self, faults: list[tuple[int, str]]) -> None:
        super().__init__("; ".join(f"{offset + 1}: {message}" for offset, message in faults))
        self.faults = faults


# --- attributes in SQL ------------------------------------------------------------------------


class AttributeText(sa.sql.expression.ColumnElement[str]):
    """A subscriber attribute (`subscribers.attributes` JSON) as text, NULL when absent.

    PostgreSQL: `attributes ->> 'key'`. SQLite: the value from `json_each`, because SQLite's
    JSON paths (before 3.45) match the stored key text as written, and the stored JSON escapes
    non-ASCII characters (`"Stra\\u00dfe"`), so a path `$."Straße"` would never match."""

    inherit_cache = True
    _traverse_internals: ClassVar[Any] = [("attributes", InternalTraversal.dp_clauseelement),
                                          ("name_param", InternalTraversal.dp_clauseelement)]

    def __init__(self, name: str) -> None:
        self.attributes = subscribers.c.attributes
        self.name_param = sa.bindparam(None, name, type_=sa.String(), unique=True)
        self.type = sa.String()

    @property
    def _from_objects(self) -> list[Any]:
        return self.attributes._from_objects


@compiles(AttributeText)
def _attribute_text(element: AttributeText, compiler: SQLCompiler, **kw: Any) -> str:
    return (f"({compiler.process(element.attributes, **kw)} ->> "
            f"CAST({compiler.process(element.name_param, **kw)} AS TEXT))")


@compiles(AttributeText, "sqlite")
def _attribute_text_sqlite(element: AttributeText, compiler: SQLCompiler, **kw: Any) -> str:
    return (f"(SELECT value FROM json_each({compiler.process(element.attributes, **kw)}) "
            f"WHERE key = {compiler.process(element.name_param, **kw)})")


# A number as text: compared as a number only when it is one (never a failing CAST).
_NUMBER = r"^[-+]?([0-9]+([.][0-9]*)?|[.][0-9]+)$"


def _number(text: sa.ColumnElement[str]) -> sa.ColumnElement[float]:
    return sa.case((text.regexp_match(_NUMBER), sa.cast(text, sa.Float)), else_=sa.null())


def _known(clause: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """A comparison that may be NULL (a missing value) as false: the logic stays two-valued."""
    return sa.func.coalesce(clause, sa.false(), type_=sa.Boolean)


# --- the condition language -------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """A compiled `where`: the SQL condition on `subscribers` joined with `memberships`, and the
    attribute names it reads with their offsets in `where`."""

    where: str
    clause: sa.ColumnElement[bool]
    attributes: tuple[tuple[str, int], ...] = ()


def compile_condition(where: str, timezone: str = "UTC") -> Condition:
    """Parse and check a `where` (docs/segments.md); raises `ConditionError` with every fault.
    Dates without an offset are local times of `timezone` (the project's)."""
    source, back, raw_names = _prepare(where)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ConditionError([_syntax_fault(exc, source, back)]) from None
    except RecursionError:
        raise ConditionError([(0, "the condition is nested too deeply")]) from None
    builder = _Builder(source, back, raw_names, ZoneInfo(timezone))
    clause = builder.condition(tree.body)
    if builder.faults:
        raise ConditionError(sorted(builder.faults))
    return Condition(where, clause, tuple(builder.attributes))


def _prepare(where: str) -> tuple[str, list[int], dict[int, str]]:
    """The Python source for `where`: on one line (newlines become spaces, so offsets stay),
    leading blanks cut, each lone `=` token made `==`. Returns the source, the offset in `where`
    of each source character (and of its end), and the names as written by offset in `where`
    (the parser NFKC-normalises identifiers; attribute names are compared as written)."""
    if len(where) > MAX_LENGTH:
        raise ConditionError([(MAX_LENGTH, f"the condition is longer than {MAX_LENGTH} characters")])
    flat = where.replace("\r", " ").replace("\n", " ")
    lead = len(flat) - len(flat.lstrip())
    text = flat[lead:].rstrip()
    if not text:
        raise ConditionError([(0, f"the condition is empty; {EXAMPLE}")])
    if "\0" in text:
        raise ConditionError([(lead + text.index("\0"), "a NUL character is not allowed")])
    equals: set[int] = set()
    raw_names: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            offset = tok.start[1]
            if tok.type == tokenize.COMMENT:
                raise ConditionError([(lead + offset, "`#` starts a comment, which is no part of a "
                                       "condition (a `#` in a value goes inside the quotes)")])
            if tok.type == tokenize.OP and tok.string == "=":
                equals.add(offset)
            elif tok.type == tokenize.NAME:
                raw_names[lead + offset] = tok.string
    except (tokenize.TokenError, SyntaxError):
        pass  # the parser reports it with its position
    source, back = [], []
    for index, char in enumerate(text):
        source.append("==" if index in equals else char)
        back.extend([lead + index] * (2 if index in equals else 1))
    back.append(lead + len(text))
    return "".join(source), back, raw_names


def _syntax_fault(exc: SyntaxError, source: str, back: list[int]) -> tuple[int, str]:
    index = (exc.offset or 0) - 1 if exc.offset else len(source)
    index = min(max(index, 0), len(source))
    message = re.sub(r" \(detected at line \d+\)", "", exc.msg)  # the source is one line
    if message.startswith("invalid syntax"):
        message = "invalid syntax"
    if re.search(r"\b(AND|OR|NOT|And|Or|Not)\b|&&|\|\|", source):
        message += "; join conditions with `and`, `or`, `not` (in lower case)"
    elif "<>" in source:
        message += "; write `!=` for not equal"
    elif index >= len(source.rstrip()):
        message = "the condition ends too early"
    return back[index], f"{message} ({EXAMPLE})"


_MIRROR = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
        ast.In: "in", ast.NotIn: "not in"}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Pow: "**", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|",
           ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}
_NODES = {ast.Lambda: "a lambda", ast.Subscript: "indexing `[…]`", ast.JoinedStr: "an f-string",
          ast.IfExp: "`… if … else …`", ast.Dict: "a dict `{…}`", ast.Set: "a set `{…}`",
          ast.NamedExpr: "`:=`", ast.Starred: "`*`", ast.ListComp: "a comprehension",
          ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
          ast.GeneratorExp: "a comprehension", ast.Await: "`await`"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\Z")

Value = str | float


class _Builder:
    """Turns the whitelisted nodes into SQLAlchemy expressions; collects a fault per mistake."""

    def __init__(self, source: str, back: list[int], raw_names: dict[int, str], tz: ZoneInfo) -> None:
        self.source, self.back, self.raw_names, self.tz = source, back, raw_names, tz
        self.encoded = source.encode("utf-8")
        self.faults: list[tuple[int, str]] = []
        self.attributes: list[tuple[str, int]] = []

    # positions: ast offsets are UTF-8 bytes of the one-line source
    def _index(self, byte_offset: int) -> int:
        return len(self.encoded[:byte_offset].decode("utf-8", errors="ignore"))

    def at(self, node: ast.AST) -> int:
        return self.back[self._index(node.col_offset)]  # type: ignore[attr-defined]

    def after(self, node: ast.AST) -> int:
        """The first character after `node` that is not a blank or a closing parenthesis (where
        an operator written after it starts)."""
        index = self._index(node.end_col_offset)  # type: ignore[attr-defined]
        while index < len(self.source) and self.source[index] in " \t)":
            index += 1
        return self.back[index]

    def fault(self, offset: int, message: str) -> sa.ColumnElement[bool]:
        self.faults.append((offset, message))
        return sa.false()

    # conditions
    def condition(self, node: ast.expr, depth: int = 0) -> sa.ColumnElement[bool]:
        if depth > MAX_DEPTH:
            return self.fault(self.at(node), f"the condition is nested more than {MAX_DEPTH} deep")
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(value, depth + 1) for value in node.values]
            return sa.and_(*parts) if isinstance(node.op, ast.And) else sa.or_(*parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return sa.not_(self.condition(node.operand, depth + 1))
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            return sa.and_(*(self.compare(operands[i], op, operands[i + 1])
                             for i, op in enumerate(node.ops)))
        if self.is_subject(node):
            return self.present(node)
        if _is_value(node):
            return self.fault(self.at(node), f"a value alone is no condition; {EXAMPLE}")
        return self.reject(node)

    def reject(self, node: ast.expr) -> sa.ColumnElement[bool]:
        if isinstance(node, ast.BinOp):
            symbol = _BINARY.get(type(node.op), "?")
            hint = ('; a column name with `-` or spaces is written attr("Name-mit Strich")'
                    if symbol == "-" else "")
            return self.fault(self.after(node.left), f"arithmetic `{symbol}` is not allowed in a "
                              f"condition{hint}")
        if isinstance(node, ast.Attribute):
            return self.fault(self.after(node.value), f"attribute access `.{node.attr}` is not "
                              'allowed; a column name with a dot is written attr("a.b")')
        if isinstance(node, ast.Call):
            return self.fault(self.at(node), 'function calls are not allowed; only attr("column '
                              'name") names an attribute')
        if isinstance(node, ast.UnaryOp):
            return self.fault(self.at(node), "this operator is not allowed; conditions are joined "
                              "with and, or, not")
        what = _NODES.get(type(node), f"`{type(node).__name__}`")
        return self.fault(self.at(node), f"{what} is not part of the condition language ({EXAMPLE})")

    # names
    def is_subject(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) or (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "attr")

    def subject(self, node: ast.expr) -> tuple[str, str] | None:
        """("builtin", name) or ("attribute", column name); None after a fault."""
        if isinstance(node, ast.Name):
            offset = self.at(node)
            name = self.raw_names.get(offset, node.id)
            if name in BUILTINS:
                return "builtin", name
            self.used(name, offset)
            return "attribute", name
        assert isinstance(node, ast.Call)
        arg = node.args[0] if len(node.args) == 1 else None
        if (node.keywords or not isinstance(arg, ast.Constant) or not isinstance(arg.value, str)
                or not arg.value or "\0" in arg.value):
            self.fault(self.at(node), 'attr() takes one column name in quotes: attr("Name mit Leerzeichen")')
            return None
        self.used(arg.value, self.at(arg))
        return "attribute", arg.value

    def used(self, name: str, offset: int) -> None:
        if (name, offset) not in self.attributes:
            self.attributes.append((name, offset))

    def present(self, node: ast.expr) -> sa.ColumnElement[bool]:
        """A name alone: the subscriber has a value for it."""
        subject = self.subject(node)
        if subject is None:
            return sa.false()
        kind, name = subject
        if kind == "attribute":
            return AttributeText(name).is_not(None)
        if name == "name":
            return subscribers.c.name.is_not(None)
        return self.fault(self.at(node), f"`{name}` alone is no condition; compare it, e.g. "
                          + ('joined < "2026-01-01"' if name in ("joined", "created")
                             else f'{name} = "…"'))

    # comparisons
    def compare(self, left: ast.expr, op: ast.cmpop, right: ast.expr) -> sa.ColumnElement[bool]:
        at_op = self.after(left)
        if isinstance(op, ast.Is | ast.IsNot):
            return self.fault(at_op, "`is` is not a comparison here; write = or !=")
        symbol = _OPS[type(op)]
        for operand in (left, right):
            if not (self.is_subject(operand) or _is_value(operand)):
                return self.reject(operand)
        if self.is_subject(left) and self.is_subject(right):
            hint = f' (did you mean "{right.id}"?)' if isinstance(right, ast.Name) else ""
            return self.fault(self.at(right), f"compare a name with a value in quotes, not with "
                              f"another name{hint}")
        if self.is_subject(right):
            if symbol in ("in", "not in"):
                return self.fault(at_op, f"`{symbol}` needs the name on its left and a list on its "
                                  'right: Rolle in ["Verwaltung", "Politik"]')
            left, right, symbol = right, left, _MIRROR[symbol]
        elif not self.is_subject(left):
            return self.fault(self.at(left), "compare a name (an attribute such as Kommune, or "
                              "email, domain, name, joined, created) with a value")
        subject = self.subject(left)
        if symbol in ("in", "not in"):
            values = self.values(right)
        else:
            value = self.value(right)
            values = None if value is None else [value]
        if subject is None or values is None:
            return sa.false()
        negate = symbol in ("!=", "not in")
        positive = {"!=": "==", "not in": "==", "in": "=="}.get(symbol, symbol)
        kind, name = subject
        if kind == "attribute":
            clause = self.attribute(name, positive, values)
        elif name in ("joined", "created"):
            clause = self.moment(name, positive, values)
        else:
            clause = self.text(name, positive, values, at_op)
        return sa.not_(clause) if negate else clause

    def value(self, node: ast.expr) -> tuple[Value, int] | None:
        offset = self.at(node)
        sign = 1
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            sign = -1 if isinstance(node.op, ast.USub) else 1
            node = node.operand
            if not (isinstance(node, ast.Constant) and type(node.value) in (int, float)):
                self.fault(offset, "a sign goes only before a number")
                return None
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return sign * float(node.value), offset
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "\0" in node.value:
                self.fault(offset, "a NUL character is not allowed")
                return None
            return node.value, offset
        if isinstance(node, ast.List | ast.Tuple):
            self.fault(offset, "a list goes only after `in` / `not in`")
            return None
        if isinstance(node, ast.Constant):
            self.fault(offset, f"`{node.value!r}` is no value here; values are text in quotes or "
                       "numbers")
        else:
            self.reject(node)
        return None

    def values(self, node: ast.expr) -> list[tuple[Value, int]] | None:
        if not isinstance(node, ast.List | ast.Tuple):
            self.fault(self.at(node), '`in` needs a list: Rolle in ["Verwaltung", "Politik"]')
            return None
        if not node.elts:
            self.fault(self.at(node), "the list is empty; it would match nobody")
            return None
        found = [self.value(element) for element in node.elts]
        return None if any(v is None for v in found) else [v for v in found if v is not None]

    # SQL, per kind of name; `op` is positive: == (for in as well), <, <=, >, >=
    def attribute(self, name: str, op: str, values: list[tuple[Value, int]]) -> sa.ColumnElement[bool]:
        text = AttributeText(name)
        texts = [v for v, _ in values if isinstance(v, str)]
        numbers = [v for v, _ in values if not isinstance(v, str)]
        parts = []
        if texts:
            subject = text if op == "==" else by_code_point(text)
            parts.append(_known(_cmp(subject, op, texts)))
        if numbers:
            parts.append(_known(_cmp(_number(text), op, numbers)))
        return sa.or_(*parts)

    def text(self, name: str, op: str, values: list[tuple[Value, int]], at_op: int) -> sa.ColumnElement[bool]:
        for value, offset in values:
            if not isinstance(value, str):
                return self.fault(offset, f"`{name}` is text: compare it with text in quotes")
        texts = [str(v) for v, _ in values]
        if name == "domain":
            if op != "==":
                return self.fault(at_op, "`domain` is compared only with =, !=, in, not in")
            return sa.or_(*(subscribers.c.email_key.endswith("@" + t.lower().lstrip("@"), autoescape=True)
                            for t in texts))
        if name == "email":
            column: sa.ColumnElement[str] = subscribers.c.email_key
            texts = [t.lower() for t in texts]
        else:
            column = subscribers.c.name
        clause = _cmp(column if op == "==" else by_code_point(column), op, texts)
        return _known(clause) if name == "name" else clause

    def moment(self, name: str, op: str, values: list[tuple[Value, int]]) -> sa.ColumnElement[bool]:
        column = memberships.c.created_at if name == "joined" else subscribers.c.created_at
        parts = []
        for value, offset in values:
            span = self.span(name, value, offset)
            if span is None:
                return sa.false()
            start, end = span
            if end is None:  # an instant
                parts.append(_cmp(column, op, [start]))
            else:  # a whole day
                parts.append({"==": sa.and_(column >= start, column < end), "<": column < start,
                              "<=": column < end, ">": column >= end, ">=": column >= start}[op])
        return sa.or_(*parts)

    def span(self, name: str, value: Value, offset: int) -> tuple[datetime, datetime | None] | None:
        """An ISO date as (its first instant, the next day's), an ISO time as (it, None)."""
        hint = (f'`{name}` is a date: compare it with an ISO date in quotes, '
                f'e.g. {name} < "2026-01-01" (or "2026-01-01T12:00")')
        if not isinstance(value, str):
            self.fault(offset, hint)
            return None
        try:
            if _DATE.match(value):
                day = date.fromisoformat(value)
                start = datetime.combine(day, time(), self.tz)
                return start, datetime.combine(day + timedelta(days=1), time(), self.tz)
            if _DATETIME.match(value):
                moment = datetime.fromisoformat(value)
                return (moment if moment.tzinfo else moment.replace(tzinfo=self.tz)), None
        except ValueError:
            self.fault(offset, f"`{value}` is no valid date")
            return None
        self.fault(offset, f"`{value}` is not an ISO date; {hint}")
        return None


def _is_value(node: ast.expr) -> bool:
    """A node that may be a value (`value` / `values` say whether it is a good one)."""
    return isinstance(node, ast.Constant | ast.List | ast.Tuple) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd))


def _cmp(subject: sa.ColumnElement[Any], op: str, values: list[Any]) -> sa.ColumnElement[bool]:
    if op == "==":
        return subject == values[0] if len(values) == 1 else subject.in_(values)
    value = values[0]
    return {"<": subject < value, "<=": subject <= value, ">": subject > value,
            ">=": subject >= value}[op]
