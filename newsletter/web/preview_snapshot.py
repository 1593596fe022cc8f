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
from html import escape as html_escape
from pathlib import Path
from typing import Any

import jinja2

from newsletter.content.fields import GREETING_PLACEHOLDER, placeholder
from newsletter.delivery import message
from newsletter.errors import NewsletterError, Problem
from newsletter.project import IssuePipeline, Project, open_project
from newsletter.render.personal import values_for
from newsletter.render.templates import UNSUBSCRIBE_PLACEHOLDER
from newsletter.tokens import Tokens, unsubscribe_url

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

    def public(self) -> dict[str, Any]:
        """What the page needs (everything but the HTML, which the iframe fetches)."""
        data = asdict(self)
        del data["html"]
        return data


def _sample_reader(project: Project, sample: str | None) -> message.Recipient:
    """The made-up reader, or the subscriber `sample` names (an error if there is none)."""
    if sample is None:
        return SAMPLE_RECIPIENT
    found = project.store.find_subscriber(sample)
    if found is None:
        raise NewsletterError(f"--as {sample}: no subscriber with this address")
    return message.Recipient(found.email, found.name, found.id, 1, found.attributes)


def _fill(part: str, values: list[str], greeting: str, *, escape: bool) -> str:
    """A rendered part with the sample reader's values in its holes (as the send does in bytes)."""
    quote = (lambda v: html_escape(v, quote=True)) if escape else (lambda v: v)
    part = part.replace(GREETING_PLACEHOLDER, quote(greeting))
    for index in sorted(range(len(values)), reverse=True):  # %%F10%% before %%F1%%
        part = part.replace(placeholder(index), quote(values[index]))
    return part


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
    rendered = issue.rendered
    token = _sample_token(project)
    sample_url = unsubscribe_url(project.settings.newsletter.base_url, token)
    reader = _sample_reader(project, sample)
    values, greeting = values_for(rendered.fields, rendered.greeting, reader.name, reader.attributes or {})
    html = _fill(rendered.html.replace(UNSUBSCRIBE_PLACEHOLDER, sample_url), values, greeting, escape=True)
    text = _fill(rendered.text.replace(UNSUBSCRIBE_PLACEHOLDER, sample_url), values, greeting, escape=False)
    prepared = issue.prepared(list_name=SAMPLE_LIST_NAME, sign=False).prepared
    headers, header_block = _headers(prepared.personalise(reader, token))
    checks = _checks(issue)
    return Snapshot(version=0, ok=True, checks=checks, subject=rendered.subject,
                    preheader=rendered.preheader or "", html=html, text=text, headers=headers,
                    header_block=header_block)


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
