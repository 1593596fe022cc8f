"""The live state of the preview: the current `Snapshot`, re-rendered when a file changes and
pushed to every open page.

A watchfiles task watches the project (the issue file, `templates/`, `newsletter.toml`, `.env`,
image files outside `dist/` and the outbox) and, if the issue lies outside the project, the
issue's own directory. A change to the issue re-renders it in a worker thread
(`build_snapshot`); new mail in the outbox only bumps the outbox version. `events` streams both
to the page as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from watchfiles import Change, awatch

from newsletter.content.images import SUFFIXES as IMAGE_SUFFIXES
from newsletter.project import CONFIG_NAME, Project
from newsletter.web.preview_snapshot import Snapshot, build_snapshot

KEEPALIVE_SECONDS = 15.0


class LiveIssue:
    """The current snapshot, re-rendered on change and broadcast to open pages."""

    def __init__(self, project: Project, issue_path: Path, sample: str | None = None) -> None:
        self.root = project.root
        self.issue_path = issue_path
        self.sample = sample  # whose copy: an address on the lists, or the made-up reader
        self.outbox_dir = project.outbox_dir
        self.dist_dir = project.dist_dir  # the preview writes local images there: not a change
        self.issue_file = issue_path.resolve()
        self.templates_dir = project.templates_dir
        self.config_files = (project.root / CONFIG_NAME, project.root / ".env")
        self.snapshot = Snapshot(version=0, ok=False, errors=["rendering …"])
        self.outbox_version = 0
        self.closing = False
        self._changed: asyncio.Condition | None = None
        self._render_lock: asyncio.Lock | None = None

    @property
    def changed(self) -> asyncio.Condition:
        if self._changed is None:  # created lazily: it belongs to the server's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def refresh(self) -> None:
        if self._render_lock is None:
            self._render_lock = asyncio.Lock()
        async with self._render_lock:
            version = self.snapshot.version + 1
            snapshot = await anyio.to_thread.run_sync(build_snapshot, self.root, self.issue_path, version,
                                                      self.sample)
            async with self.changed:
                self.snapshot = snapshot
                self.changed.notify_all()

    async def outbox_changed(self) -> None:
        async with self.changed:
            self.outbox_version += 1
            self.changed.notify_all()

    def watch_groups(self) -> list[tuple[Path, bool]]:
        """(directory, recursive): the whole project (templates/ and outbox/ may appear later),
        and the issue's own directory only if it lies outside the project."""
        groups = [(self.root, True)]
        if not self.issue_file.parent.is_relative_to(self.root):
            groups.append((self.issue_file.parent, False))
        return groups

    def classify(self, path: str) -> str | None:
        """'issue' for files that change the email, 'outbox' for new mail, else None."""
        p = Path(path)
        if p == self.issue_file or p in self.config_files or p.is_relative_to(self.templates_dir):
            return "issue"
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_relative_to(self.dist_dir):
            return "issue"  # perhaps a local image of the issue: changed, or there at last
        if p.is_relative_to(self.outbox_dir) and p.parent.name in ("new", "cur"):
            return "outbox"
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        async with anyio.create_task_group() as group:
            for directory, recursive in self.watch_groups():
                group.start_soon(self._watch, directory, recursive, stop)

    async def _watch(self, directory: Path, recursive: bool, stop: asyncio.Event) -> None:
        def relevant(_change: Change, path: str) -> bool:
            return self.classify(path) is not None

        # Watching directories, not files, also sees saves that rename a new file over the old.
        # step: changes are handed over 30 ms after the last one; debounce caps a long burst.
        async for changes in awatch(directory, watch_filter=relevant, stop_event=stop, recursive=recursive,
                                    debounce=300, step=30):
            kinds = {self.classify(path) for _change, path in changes}
            if "issue" in kinds:
                await self.refresh()
            if "outbox" in kinds:
                await self.outbox_changed()

    async def close(self) -> None:
        """End every event stream, so that shutting down does not wait for open pages."""
        async with self.changed:
            self.closing = True
            self.changed.notify_all()

    def _stamp(self) -> tuple[int, int] | None:
        return None if self.closing else (self.snapshot.version, self.outbox_version)

    async def events(self, request: Request) -> AsyncIterator[str]:
        """Server-sent events: the state now, then every change."""
        yield "retry: 500\n\n"
        seen = (-1, -1)
        while True:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.changed.wait_for(lambda seen=seen: self._stamp() != seen),
                        KEEPALIVE_SECONDS,
                    )
                snapshot, outbox = self.snapshot, self.outbox_version
            if self.closing or await request.is_disconnected():
                return
            if snapshot.version != seen[0]:
                yield _sse("issue", snapshot.public())
            if outbox != seen[1]:
                yield _sse("outbox", {"version": outbox})
            if (snapshot.version, outbox) == seen:
                yield ": keepalive\n\n"
            seen = (snapshot.version, outbox)


def _sse(event: str, data: Any) -> str:
    # json.dumps never emits a raw newline, so one `data:` line carries the whole payload.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
