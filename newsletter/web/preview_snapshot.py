"""One render of the previewed issue (`Snapshot`): the email as a subscriber gets it, or the
problems that stopped it, as ``FILE:LINE:COL: field: message`` lines.

`run_pipeline` is the whole sequence from files to message (load → render → personalise →
prepare → check); `build_snapshot` wraps it so that a mistake in the issue or a template
becomes a failed snapshot instead of an exception.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa

from newsletter.content.topics import selection, used_topics
from newsletter.delivery import message
from newsletter.delivery.variants import choice
from newsletter.errors import NewsletterError, Problem
from newsletter.project import IssuePipeline, Project, open_project
from newsletter.render.html import render_issue
from newsletter.tokens import Tokens

log = logging.getLogger("newsletter.web.preview")

# The headers view shows a subscriber's copy: a made-up reader on a list called "main".
SAMPLE_RECIPIENT = message.Recipient("erika.mustermann@example.org", "Erika Mustermann",
                                     subscriber_id=1, list_id=1)
SAMPLE_LIST_NAME = "main"
TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2", ".mjml", ".html", ".txt")


@dataclass(frozen=True)
class Snapshot:
    """One render of the issue: the email, or the problems that stopped it."""

    version: int
    ok: bool
    errors: list[str] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)  # (severity, FILE:LINE:COL: …)
    subject: str = ""
    preheader: str = ""
    html: str = ""
    text: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    header_block: str = ""
    render_ms: float = 0.0
    rendered_at: str = ""
    archive_url: str = ""  # `{base_url}/archive/`: where the mail's local images are online

    def public(self) -> dict[str, Any]:
        """What the page needs (everything but the HTML, which the iframe fetches)."""
        data = asdict(self)
        del data["html"]
        return data


def _sample_reader(project: Project, sample: str | None) -> tuple[message.Recipient, frozenset[str] | None]:
    """The made-up reader, or the subscriber `sample` names (an error if there is none), and
    the topics that reader chose (None: no choice, every section)."""
    if sample is None:
        return SAMPLE_RECIPIENT, None
    found = project.store.find_subscriber(sample)
    if found is None:
        raise NewsletterError(f"--as {sample}: no subscriber with this address")
    reader = message.Recipient(found.email, found.name, found.id, 1, found.attributes)
    return reader, _chosen_topics(project, found.id)


def _chosen_topics(project: Project, subscriber_id: int) -> frozenset[str] | None:
    """The topics the subscriber chose on the first of their lists (by name) that declares
    topics and where they chose some of those: what a send to that list gives them."""
    from newsletter.audience.queries import list_names, member_topics

    chosen, names = member_topics(), list_names()
    with project.store.read() as conn:
        rows = conn.execute(sa.select(names.c.name, chosen.c.topics)
                            .join(names, names.c.list_id == chosen.c.list_id)
                            .where(chosen.c.subscriber_id == subscriber_id)
                            .order_by(names.c.name)).all()
    for list_name, topics in rows:
        keys = choice(topics if isinstance(topics, list) else None,
                      project.settings.topics.get(list_name, {}))
        if keys:
            return keys
    return None


def _part(message: email.message.Message, subtype: str) -> str:
    """A text part of the message, decoded, with the line ends the rendered issue has."""
    body = message.get_body((subtype,))  # type: ignore[attr-defined]
    return str(body.get_content()).replace("\r\n", "\n")

def build_snapshot(root: Path, issue_path: Path, version: int = 0, sample: str | None = None) -> Snapshot:
    """Load settings and issue afresh, render, check; never raises for user mistakes.
    `sample`: the address of the subscriber whose copy to show (personal fields, greeting)."""
    started = time.perf_counter()
    stamp = datetime.now().strftime("%H:%M:%S")
    try:
        snapshot = run_pipeline(root, issue_path, sample)
    except NewsletterError as error:
        return _failed(version, error.lines(), started, stamp)
    except OSError as error:
        where = error.filename or issue_path
        return _failed(version, [f"{where}: {error.strerror or error}"], started, stamp)
    except Exception as error:  # a broken template or a renderer bug: show it, keep serving
        log.exception("rendering %s failed", issue_path)
        return _failed(version, [_unexpected_problem(error, root).format()], started, stamp)
    return dataclasses.replace(snapshot, version=version, rendered_at=stamp,
                               render_ms=round((time.perf_counter() - started) * 1000, 1))


def run_pipeline(root: Path, issue_path: Path, sample: str | None = None) -> Snapshot:
    """The issue from its files to a subscriber's copy, as `send` would build it: load the
    project and the issue, render, put in a sample unsubscribe link and the sample reader's
    personal fields (a made-up reader, or the subscriber with the address `sample`), prepare the
    message (headers by the sending code itself, so the preview cannot drift from what `send`
    writes), and run `newsletter check`. Raises for user mistakes."""
    project = open_project(root, exact=True)
    issue = project.issue(issue_path)
    reader, topics = _sample_reader(project, sample)
    if topics is not None and used_topics(issue.loaded.issue):
        # The reader's topic variant, as the send renders it (delivery/variants.py).
        if not selection(issue.loaded.issue, topics):
            raise NewsletterError(f"--as {reader.email}: this reader gets nothing of this issue: "
                                  f"no section for their topics ({', '.join(sorted(topics))}); "
                                  "the send skips them")
        issue = dataclasses.replace(issue, _rendered=render_issue(issue.loaded, project, topics=topics))
    rendered = issue.rendered
    # Preparing writes the local images into the build folder, where the page shows them from
    # (`delivery.plan.prepare_issue`; docs/images.md).
    prepared = issue.prepared(list_name=SAMPLE_LIST_NAME, sign=False).prepared
    # The reader's copy as the send builds it (the same holes, filled by the same code): the
    # page shows its parts and its headers.
    raw = prepared.personalise(reader, _sample_token(project))
    headers, header_block = _headers(raw)
    copy = email.message_from_bytes(raw, policy=email.policy.default)
    html, text = (_part(copy, kind) for kind in ("html", "plain"))
    checks = _checks(issue)
    return Snapshot(version=0, ok=True, checks=checks, subject=rendered.subject,
                    preheader=rendered.preheader or "", html=html, text=text, headers=headers,
                    header_block=header_block, archive_url=rendered.archive_url)


def _failed(version: int, lines: list[str], started: float, stamp: str) -> Snapshot:
    return Snapshot(version=version, ok=False, errors=lines,
                    render_ms=round((time.perf_counter() - started) * 1000, 1), rendered_at=stamp)


def _unexpected_problem(error: Exception, root: Path) -> Problem:
    """Locate an exception in a template if we can (Jinja rewrites tracebacks so that
    template frames carry the template's file name and line)."""
    if isinstance(error, jinja2.TemplateSyntaxError):
        file = error.filename or error.name or "template"
        return Problem(_short(file, root), error.lineno, None, "template", error.message or str(error))
    file, line = None, None
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        name = frame.f_code.co_filename
        if name.endswith(TEMPLATE_SUFFIXES):
            file, line = name, lineno
    text = f"{type(error).__name__}: {error}"
    if file is None:
        return Problem("render", None, None, "", text)
    return Problem(_short(file, root), line, None, "template", text)


def _short(file: str, root: Path) -> str:
    try:
        return str(Path(file).resolve().relative_to(root))
    except ValueError:
        return file


def _sample_token(project: Project) -> str:
    # A token_id no subscriber has (real ones are 16 characters): the sample link unsubscribes nobody.
    return Tokens.for_project(project).mint_unsubscribe("preview-sample", SAMPLE_RECIPIENT.list_id)


def _headers(raw: bytes) -> tuple[list[tuple[str, str]], str]:
    """The headers of a personalised message, decoded for reading, and the header block as it
    goes on the wire."""
    block = raw.split(b"\r\n\r\n", 1)[0]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(block + b"\r\n\r\n")
    shown = [(name, str(value).strip()) for name, value in parsed.items()
             if name.lower() not in ("mime-version", "content-type")]
    return shown, block.decode("ascii", "replace").replace("\r\n", "\n")


def _checks(issue: IssuePipeline) -> list[tuple[str, str]]:
    """(severity, line) of every `newsletter check` finding (without the live link check),
    validation warnings included; a failing check never takes the preview down."""
    try:
        report = issue.check()
    except NewsletterError as error:
        return [("error", line) for line in error.lines()]
    except Exception as error:
        log.exception("newsletter check failed")
        return [("error", f"newsletter check could not run: {type(error).__name__}: {error}")]
    return [(problem.severity, problem.format()) for problem in report.problems]
