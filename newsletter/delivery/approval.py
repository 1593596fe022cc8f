"""Approval (Vier-Augen-Prinzip): who approved which exact content of an issue.

`newsletter approve FILE --by NAME` records, in the `approvals` table (migration 12, shared by
every machine on the database), a *fingerprint* of what the readers would get, in four parts,
each a SHA-256, so that a refusal can say what changed:

* `issue` — the issue file's parsed content (`Issue.model_dump_json()`: comments, quoting and
  layout of the YAML do not count, every value does) and the bytes of each local image it uses;
* `templates` — every file under the project's `templates/` (its overrides), and the packaged
  templates (their bytes, with the program's version); not those of the web pages, the
  preview, the confirmation mail and the archive (`NOT_MAIL`);
* `config` — the settings that shape the message: `[newsletter]` (title, from, reply_to,
  base_url, list_id, language, timezone), `[imprint]` (the footer), `[theme]` and `[topics.*]`,
  as in effect (newsletter.toml, .env or the environment);
* `content` — the rendered message itself (`message.content_hash`: subject, HTML, text), as a
  send records it; it catches what the other parts cannot see (another version of a library).

With `[delivery] require_approval = true`, `send --list` (and the scheduler, when a scheduled
send starts) go ahead only if the latest approval of the issue has the fingerprint the issue has
now (`require`). Test sends and dry runs never ask. See docs/approval.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from newsletter.content.validate import LoadedIssue
from newsletter.db.schema import utcnow
from newsletter.delivery.message import content_hash
from newsletter.delivery.tables import approvals
from newsletter.errors import NewsletterError
from newsletter.headers import first_unsafe
from newsletter.render.html import RenderedIssue
from newsletter.render.templates import PACKAGED_TEMPLATES

if TYPE_CHECKING:
    from newsletter.audience.store import Store
    from newsletter.project import Project

# The settings sections that shape the message (what `render` and `message.prepare` read).
CONFIG_SECTIONS = ("newsletter", "imprint", "theme", "topics")
ISSUE_KEY = "issue"
IMAGE_PREFIX = "image "
PACKAGED_KEY = "packaged templates"
# Templates that never go into an issue's mail: the pages of `serve` and the preview, the
# confirmation mail, the archive page and feed (a change to them asks for no new approval).
NOT_MAIL = ("web/", "confirm/", "preview/", "archive.html.j2", "feed.xml.j2", "README")
MAX_NAME = 200


class NotApproved(NewsletterError):
    """`[delivery] require_approval` is on and the issue is not approved as it is now."""


@dataclass(frozen=True)
class Fingerprint:
    """What an approval covers: a hash per issue file / image, template file and config section,
    and the rendered message's hash."""

    issue: dict[str, str]
    templates: dict[str, str]
    config: dict[str, str]
    content: str

    def digest(self, part: str) -> str:
        """One SHA-256 over the hashes of a part (`issue`, `templates`, `config`)."""
        return _sha(json.dumps(getattr(self, part), sort_keys=True).encode())

    def changes(self, now: Fingerprint) -> list[str]:
        """What differs in `now`, in words (empty: the same content)."""
        found = [*_file_changes(self.issue, now.issue, _issue_name),
                 *_file_changes(self.templates, now.templates, _template_name),
                 *(_config_name(section) for section in sorted(set(self.config) | set(now.config))
                   if self.config.get(section) != now.config.get(section))]
        if not found and self.content != now.content:
            found.append("the rendered message (the issue, templates and settings are the same: "
                         "the program or a library it uses renders it differently)")
        return found


@dataclass(frozen=True)
class Approval:
    id: int
    issue_slug: str
    by: str
    at: datetime
    issue_path: str
    fingerprint: Fingerprint

    def as_dict(self) -> dict[str, Any]:
        f = self.fingerprint
        return {"id": self.id, "issue": self.issue_slug, "by": self.by, "at": self.at,
                "issue_path": self.issue_path,
                "hashes": {"issue": f.digest("issue"), "templates": f.digest("templates"),
                           "config": f.digest("config"), "content": f.content}}


@dataclass(frozen=True)
class Verdict:
    """Where an issue stands with its approvals now."""

    state: str  # draft (never approved) | approved | changed (since the latest approval)
    approval: Approval | None  # the latest approval
    changes: list[str]  # with `changed`: what changed since

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "changes": self.changes,
                "approval": self.approval.as_dict() if self.approval else None}


# --- the fingerprint ---------------------------------------------------------------------------


def fingerprint(project: Project, loaded: LoadedIssue, rendered: RenderedIssue) -> Fingerprint:
    """The fingerprint of the issue as it renders now in `project`."""
    issue = {ISSUE_KEY: _sha(loaded.issue.model_dump_json().encode())}
    # The local images' SHA-256, taken when the issue was rendered (`render.images`).
    issue.update((IMAGE_PREFIX + image.path.strip(), image.digest) for image in rendered.images)
    templates = {f"templates/{name}": digest for name, digest in _tree(project.templates_dir)}
    from newsletter import __version__

    packaged = _sha(json.dumps(list(_tree(PACKAGED_TEMPLATES))).encode())
    templates[PACKAGED_KEY] = f"{__version__} {packaged}"
    settings = project.settings
    config = {}
    for section in CONFIG_SECTIONS:
        value = getattr(settings, section)
        data = value.model_dump(mode="json", by_alias=True) if hasattr(value, "model_dump") else value
        config[section] = _sha(json.dumps(data, sort_keys=True, ensure_ascii=False).encode())
    return Fingerprint(issue, templates, config,
                       content_hash(rendered.subject, rendered.html, rendered.text))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(directory: Path) -> Iterable[tuple[str, str]]:
    """(path relative to `directory`, SHA-256) of every file under it that may shape a mail
    (not `NOT_MAIL`), sorted; none if the directory is missing."""
    if not directory.is_dir():
        return []
    found = []
    for folder, subfolders, names in os.walk(directory):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        for name in sorted(names):
            path = Path(folder, name)
            if path.relative_to(directory).as_posix().startswith(NOT_MAIL):
                continue
            found.append((path.relative_to(directory).as_posix(), _sha(path.read_bytes())))
    return sorted(found)


def _file_changes(then: dict[str, str], now: dict[str, str], name: Any) -> list[str]:
    changed = []
    for key in sorted(set(then) | set(now), key=lambda k: (k != ISSUE_KEY, k)):
        if key not in now:
            changed.append(f"{name(key, then[key], None)} (removed)")
        elif key not in then:
            changed.append(f"{name(key, None, now[key])} (added)")
        elif then[key] != now[key]:
            changed.append(name(key, then[key], now[key]))
    return changed


def _issue_name(key: str, _then: str | None, _now: str | None) -> str:
    return "the issue file" if key == ISSUE_KEY else f"the image {key.removeprefix(IMAGE_PREFIX)}"


def _template_name(key: str, then: str | None, now: str | None) -> str:
    if key != PACKAGED_KEY:
        return f"the template {key}"
    old, new = (then or "?").split()[0], (now or "?").split()[0]
    version = f"newsletter {old} then, {new} now" if old != new else f"of newsletter {new}, changed"
    return f"the packaged templates ({version})"


def _config_name(section: str) -> str:
    table = "[topics.*]" if section == "topics" else f"[{section}]"
    return (f"the settings {table} (newsletter.toml, or NEWSLETTER_{section.upper()}__… in the "
            "environment or .env)")


def local_time(moment: datetime, timezone: str, *, seconds: bool = False) -> str:
    """`2026-03-10 08:00 Europe/Berlin`: a UTC time as the editor reads it (the log: with
    seconds)."""
    shape = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return f"{moment.astimezone(ZoneInfo(timezone)):{shape}} {timezone}"


# --- the approvals table ----------------------------------------------------------------------


def clean_approver(name: str) -> str:
    """The approver's name as stored: trimmed, one line, at most 200 characters."""
    name = " ".join(name.split())
    if not name:
        raise NewsletterError("--by: give the name of the person who approves")
    if first_unsafe(name) is not None or any(unicodedata.category(c) == "Cf" for c in name):
        # Cf: invisible format characters (right-to-left override, zero-width space) could
        # make the name shown differ from the name stored, or show nothing at all.
        raise NewsletterError("--by: the name must not contain control or invisible format characters")
    if len(name) > MAX_NAME:
        raise NewsletterError(f"--by: at most {MAX_NAME} characters")
    return name


def record(store: Store, project: Project, loaded: LoadedIssue, rendered: RenderedIssue,
           by: str) -> Approval:
    """Record an approval of the issue as it is now; earlier approvals stay (the history)."""
    by = clean_approver(by)
    print_ = fingerprint(project, loaded, rendered)
    now = utcnow()
    path = _relative(project, loaded.path)
    with store.write() as conn:
        new_id = conn.execute(approvals.insert().values(
            issue_slug=rendered.slug, approved_by=by, approved_at=now, issue_path=path,
            issue_hash=print_.digest("issue"), templates_hash=print_.digest("templates"),
            config_hash=print_.digest("config"), content_hash=print_.content,
            parts={"issue": print_.issue, "templates": print_.templates, "config": print_.config},
        )).inserted_primary_key[0]
    return Approval(int(new_id), rendered.slug, by, now, path, print_)


def history(store: Store, issue_slug: str) -> list[Approval]:
    """Every approval of the issue, oldest first."""
    with store.read() as conn:
        rows = conn.execute(sa.select(approvals).where(approvals.c.issue_slug == issue_slug)
                            .order_by(approvals.c.id)).all()
    return [_approval(row) for row in rows]


def latest(store: Store, issue_slug: str) -> Approval | None:
    """The latest approval of the issue: the one that counts."""
    with store.read() as conn:
        row = conn.execute(sa.select(approvals).where(approvals.c.issue_slug == issue_slug)
                           .order_by(approvals.c.id.desc()).limit(1)).first()
    return None if row is None else _approval(row)


def _approval(row: Any) -> Approval:
    parts = row.parts or {}
    return Approval(row.id, row.issue_slug, row.approved_by, row.approved_at, row.issue_path,
                    Fingerprint(dict(parts.get("issue", {})), dict(parts.get("templates", {})),
                                dict(parts.get("config", {})), row.content_hash))


def _relative(project: Project, path: Path) -> str:
    try:
        return path.resolve().relative_to(project.root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


# --- the verdict and the check ----------------------------------------------------------------


def verdict(store: Store, project: Project, loaded: LoadedIssue,
            rendered: RenderedIssue) -> Verdict:
    """Draft, approved, or changed since the latest approval (and what changed)."""
    approval = latest(store, rendered.slug)
    if approval is None:
        return Verdict("draft", None, [])
    changes = approval.fingerprint.changes(fingerprint(project, loaded, rendered))
    return Verdict("changed" if changes else "approved", approval, changes)


def require(store: Store, project: Project, loaded: LoadedIssue, rendered: RenderedIssue) -> None:
    """With `[delivery] require_approval`: raise `NotApproved` unless the issue is approved as
    it is now, saying what changed since its latest approval. Without it: nothing."""
    if not project.settings.delivery.require_approval:
        return
    found = verdict(store, project, loaded, rendered)
    if found.state == "approved":
        return
    approve = f"`newsletter approve {_relative(project, loaded.path)} --by NAME`"
    if found.approval is None:
        raise NotApproved(
            f"the issue `{rendered.slug}` has not been approved, and newsletter.toml requires it "
            f"([delivery] require_approval = true); ask for approval: {approve}")
    a = found.approval
    when = local_time(a.at, project.settings.newsletter.timezone)
    raise NotApproved(
        f"the issue `{rendered.slug}` changed since {a.by} approved it ({when}): "
        f"{'; '.join(found.changes)}; ask for approval again: {approve}")


def approve_file(project: Project, path: str | Path, by: str) -> Approval:
    """`newsletter approve`: load, validate and render the issue, record its approval."""
    from newsletter.audience.store import open_store

    pipeline = project.issue(path)
    with open_store(project) as store:
        return record(store, project, pipeline.loaded, pipeline.rendered, by)
