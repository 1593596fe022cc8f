"""The library API: a newsletter project and the pipeline of one issue.

    import newsletter
    with newsletter.open_project("mein-newsletter") as project:
        issue = project.issue("issues/2026-02.yaml")   # load + validate (raises IssueInvalid)
        issue.build()                                    # dist/<slug>/…, archive, feed
        project.import_subscribers("subscribers/example.csv", "example", confirmed=True)
        report = project.send(issue.path, "example")     # into outbox/ without an SMTP host

The CLI, the preview, `serve` and the benchmarks use this module; it imports the heavy parts
(renderer, store, SMTP) only when a method needs them, so `newsletter validate` and `--help`
start fast. See docs/architecture.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from newsletter.errors import ProjectNotFound

if TYPE_CHECKING:
    from newsletter.audience.import_report import ImportReport
    from newsletter.audience.store import Store
    from newsletter.config import Settings
    from newsletter.content.validate import LoadedIssue
    from newsletter.delivery.plan import PreparedIssue, SendPlan
    from newsletter.delivery.sender import SendReport
    from newsletter.delivery.transport import Reply
    from newsletter.render.archive import BuildResult
    from newsletter.render.check import CheckReport
    from newsletter.render.html import RenderedIssue

CONFIG_NAME = "newsletter.toml"
PROJECT_ENV = "NEWSLETTER_PROJECT"


@dataclass(eq=False)
class Project:
    """A newsletter project directory, its settings, and (opened on first use) its store."""

    root: Path
    settings: Settings

    # -- where things live ---------------------------------------------------------------------

    @property
    def issues_dir(self) -> Path:
        return self.root / "issues"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def subscribers_dir(self) -> Path:
        return self.root / "subscribers"

    @property
    def dist_dir(self) -> Path:
        return self.root / "dist"

    @property
    def outbox_dir(self) -> Path:
        return self.root / "outbox"

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path made absolute against the root."""
        url = self.settings.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str((self.root / url[len(prefix):]).resolve())
        return url

    # -- the store (opened lazily, closed with the project) ------------------------------------

    @cached_property
    def store(self) -> Store:
        from newsletter.audience.store import open_store

        return open_store(self)

    def close(self) -> None:
        """Close the store if it was opened."""
        store = self.__dict__.pop("store", None)
        if store is not None:
            store.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- issues -------------------------------------------------------------------------------

    def issue(self, path: str | Path, *, strict: bool = False) -> IssuePipeline:
        """Load and validate an issue file (raises IssueInvalid with every problem)."""
        from newsletter.content.validate import load_issue

        declared = {key for keys in self.settings.topics.values() for key in keys}
        return IssuePipeline(self, load_issue(path, strict=strict, topics=declared, root=self.root))

    # -- subscribers --------------------------------------------------------------------------

    def import_subscribers(self, csv_path: str | Path, list_name: str, *, confirmed: bool = False,
                           dry_run: bool = False, create_list: bool = False,
                           on_progress: Any = None) -> ImportReport:
        """Import a CSV file into a list (one transaction; the report says what happened to each
        row). With `create_list`, a missing list is created first."""
        from newsletter.audience.importer import import_csv
        from newsletter.audience.records import StoreError

        try:
            mailing_list = self.store.get_list(list_name)
        except StoreError:
            if not create_list:
                raise
            mailing_list = self.store.create_list(list_name)
        return import_csv(self.store, Path(csv_path), mailing_list, confirmed=confirmed,
                          dry_run=dry_run, on_progress=on_progress)

    def forget(self, email: str) -> tuple[bool, list[Path]]:
        """Erase a person (GDPR Art. 17): the store's records, then the local copies of mails to
        them in outbox/ and dry runs. (found in the store, files deleted)."""
        from newsletter.delivery.outbox import forget_local_copies

        found = self.store.forget(email)
        return found, forget_local_copies(self, email)

    # -- sending ------------------------------------------------------------------------------

    def plan_send(self, issue_path: str | Path, list_name: str, *, segment: str | None = None,
                  concurrency: int | None = None, rate: float | None = None) -> SendPlan:
        """Render the issue and look up the list (and the segment `segment` of it) and any
        earlier send of it; changes nothing."""
        from newsletter.delivery.plan import plan_send

        return plan_send(self, Path(issue_path), list_name, segment=segment,
                         concurrency=concurrency, rate=rate)

    def send(self, issue_path: str | Path, list_name: str, *, segment: str | None = None,
             force: bool = False, concurrency: int | None = None, rate: float | None = None,
             progress: Any = None) -> SendReport:
        """Send (or resume) an issue to a list, or to the segment `segment` of it: into outbox/
        when no SMTP host is configured. With `[delivery] require_approval`, only an issue
        approved as it is (`delivery.approval.NotApproved` otherwise)."""
        from newsletter.delivery.approval import require
        from newsletter.delivery.sender import run_send

        plan = self.plan_send(issue_path, list_name, segment=segment, concurrency=concurrency,
                              rate=rate)
        try:
            require(plan.store, self, plan.issue.loaded, plan.issue.rendered)
            return run_send(plan, force=force, progress=progress)
        finally:
            plan.store.close()

    def send_test(self, issue_path: str | Path, addresses: Sequence[str]) -> list[tuple[str, Reply]]:
        """A test send ("[TEST] " subject, no journal, no list) to `addresses`."""
        from newsletter.delivery.testsend import send_test

        return send_test(self, Path(issue_path), addresses)


@dataclass(eq=False)
class IssuePipeline:
    """One validated issue and what is made of it: load → validate → render → build / check →
    prepared message. Each stage runs once, on first use."""

    project: Project
    loaded: LoadedIssue
    _rendered: RenderedIssue | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def warnings(self) -> list[Any]:
        return self.loaded.warnings

    @property
    def rendered(self) -> RenderedIssue:
        if self._rendered is None:
            from newsletter.render.html import render_issue

            self._rendered = render_issue(self.loaded, self.project)
        return self._rendered

    def build(self, out_dir: str | Path | None = None) -> BuildResult:
        """Write email.html, email.txt, the web version and .ics files; refresh archive + feed."""
        from newsletter.render.archive import build_issue

        return build_issue(self.loaded, self.project, Path(out_dir) if out_dir else None)

    def check(self, *, links: bool = False) -> CheckReport:
        """The pre-send checks (size, alt texts, imprint, unsubscribe; with `links` a live fetch)."""
        from newsletter.render.check import check_issue

        return check_issue(self.loaded, self.project, links=links, rendered=self.rendered)

    def prepared(self, *, list_name: str | None = None, list_title: str | None = None,
                 subject_prefix: str = "", sign: bool = True) -> PreparedIssue:
        """The message prepared once (`.prepared`), ready for per-recipient substitution, with
        the rendered issue (`.rendered`) and its content hash: `delivery.plan.prepare_issue`."""
        from newsletter.delivery.plan import prepare_issue

        return prepare_issue(self.project, self.loaded, list_name, list_title=list_title,
                             subject_prefix=subject_prefix, sign=sign, rendered=self.rendered)


# -- finding a project: one rule for every command ---------------------------------------------


def find_project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: the current one) with newsletter.toml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise ProjectNotFound(
        f"no {CONFIG_NAME} found in {here} or any parent directory; "
        "run `newsletter init` to create a project, or pass --project DIR"
    )


def locate_project(explicit: str | Path | None = None, *, near: str | Path | None = None) -> Path:
    """The project directory for a command, found upwards (the nearest newsletter.toml) from:
    `--project DIR` (or NEWSLETTER_PROJECT) if given; else from `near`, the issue file the
    command works on (an issue belongs to its own project); else from the current directory."""
    explicit = explicit or os.environ.get(PROJECT_ENV) or None
    if explicit is not None:
        return find_project_root(Path(explicit))
    if near is not None:
        start = Path(near).resolve()
        try:
            return find_project_root(start if start.is_dir() else start.parent)
        except ProjectNotFound:
            pass  # an issue file outside any project: the current directory's project
    return find_project_root()


def open_project(path: str | Path | None = None, *, near: str | Path | None = None,
                 exact: bool = False) -> Project:
    """Open the project at `path` (or, without one, the project of `near` / the current
    directory, see `locate_project`) and read its settings. With `exact`, `path` itself is the
    project directory (no search upwards; its newsletter.toml may be missing: all defaults)."""
    from newsletter.config import load_settings

    root = Path(path).resolve() if exact and path is not None else locate_project(path, near=near)
    return Project(root=root, settings=load_settings(root / CONFIG_NAME))
