"""Work shared between the parts of one render.

The email, its web version, the text part and the .ics files convert the same
Markdown texts; inside `shared_work()` each conversion runs once. The memo lives
only as long as the block (one `render_issue`), so nothing from one issue leaks
into the next and memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_memo: ContextVar[dict[Hashable, Any] | None] = ContextVar("newsletter_render_memo", default=None)


@contextmanager
def shared_work() -> Iterator[None]:
    """Reuse results of `once()` until the block ends."""
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def once(fn: Callable[..., T], *args: Hashable) -> T:
    """`fn(*args)`, computed once per `shared_work()` block (outside one: every time)."""
    memo = _memo.get()
    if memo is None:
        return fn(*args)
    key = (fn, *args)
    try:
        return memo[key]  # type: ignore[no-any-return]
    except KeyError:
        result = memo[key] = fn(*args)
        return result
