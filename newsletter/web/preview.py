"""`newsletter preview`: a local web page showing an issue as readers will see it.

The server renders the issue once per change, not per request: a watchfiles task
watches the issue file, the project's templates/ and newsletter.toml, re-renders in
a worker thread and pushes the new state to every open page over server-sent
events. The page then swaps only the email content, so the chosen view and the
scroll position survive. A render that fails becomes a list of
``FILE:LINE:COL: field: message`` lines (the text `newsletter validate` prints)
shown in place of the email; the next good save brings the email back.

A second page lists the local outbox (the Maildir that `send` writes to when no
SMTP host is configured), so the preview doubles as a local test inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import socket
import threading
import time
import traceback
import webbrowser
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from watchfiles import Change, awatch

from newsletter.config import CONFIG_NAME, Project, load_project
from newsletter.content.validate import LoadedIssue, load_issue
from newsletter.delivery import message
from newsletter.delivery.outbox import list_outbox, open_outbox, read_outbox_message, text_part
from newsletter.errors import NewsletterError, Problem
from newsletter.render.check import check_issue
from newsletter.render.html import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue, render_issue
from newsletter.tokens import Tokens

log = logging.getLogger("newsletter.web.preview")

HOST = "127.0.0.1"  # the preview shows unpublished drafts: never listen beyond this machine
DEFAULT_PORT = 8025
PAGE_DIR = Path(__file__).parent.parent / "templates" / "preview"
# The headers view shows a subscriber's copy: a made-up reader on a list called "main".
SAMPLE_RECIPIENT = message.Recipient("erika.mustermann@example.org", "Erika Mustermann",
                                     subscriber_id=1, list_id=1)
SAMPLE_LIST_NAME = "main"
TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2", ".mjml", ".html", ".txt")
KEEPALIVE_SECONDS = 15.0


# --------------------------------------------------------------------------- rendering


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


def build_snapshot(root: Path, issue_path: Path, version: int = 0) -> Snapshot:
    """Load settings and issue afresh, render, check; never raises for user mistakes."""
    started = time.perf_counter()
    stamp = datetime.now().strftime("%H:%M:%S")
    try:
        project = load_project(root, search=False)
        loaded = load_issue(issue_path)
        rendered = render_issue(loaded, project)
        token = _sample_token(project)
        sample_url = f"{project.settings.newsletter.base_url.rstrip('/')}/u/{token}"
        html = rendered.html.replace(UNSUBSCRIBE_PLACEHOLDER, sample_url)
        text = rendered.text.replace(UNSUBSCRIBE_PLACEHOLDER, sample_url)
        headers, header_block = _headers(project, rendered, token)
        checks = _checks(loaded, project, rendered)
    except NewsletterError as error:
        return _failed(version, error.lines(), started, stamp)
    except OSError as error:
        where = error.filename or issue_path
        return _failed(version, [f"{where}: {error.strerror or error}"], started, stamp)
    except Exception as error:  # a broken template or a renderer bug: show it, keep serving
        log.exception("rendering %s failed", issue_path)
        return _failed(version, [_unexpected_problem(error, root).format()], started, stamp)
    return Snapshot(
        version=version, ok=True, checks=checks, subject=rendered.subject,
        preheader=rendered.preheader or "", html=html, text=text, headers=headers, header_block=header_block,
        render_ms=round((time.perf_counter() - started) * 1000, 1), rendered_at=stamp,
    )


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
    message = f"{type(error).__name__}: {error}"
    if file is None:
        return Problem("render", None, None, "", message)
    return Problem(_short(file, root), line, None, "template", message)


def _short(file: str, root: Path) -> str:
    try:
        return str(Path(file).resolve().relative_to(root))
    except ValueError:
        return file


def _sample_token(project: Project) -> str:
    # A token_id no subscriber has (real ones are 16 characters): the sample link unsubscribes nobody.
    return Tokens.for_project(project).unsubscribe("preview-sample", SAMPLE_RECIPIENT.list_id)


def _headers(project: Project, rendered: RenderedIssue, token: str) -> tuple[list[tuple[str, str]], str]:
    """The headers of a subscriber's copy (sample recipient and token), decoded for reading,
    and the header block as it goes on the wire. Built by the sending code itself
    (`message.prepare`), so the preview cannot drift from what `send` writes."""
    prepared = message.prepare(project, rendered, list_name=SAMPLE_LIST_NAME, sign=False)
    raw = prepared.personalise(SAMPLE_RECIPIENT, token)
    block = raw.split(b"\r\n\r\n", 1)[0]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(block + b"\r\n\r\n")
    shown = [(name, str(value).strip()) for name, value in parsed.items()
             if name.lower() not in ("mime-version", "content-type")]
    return shown, block.decode("ascii", "replace").replace("\r\n", "\n")


def _checks(loaded: LoadedIssue, project: Project, rendered: RenderedIssue) -> list[tuple[str, str]]:
    """(severity, line) of every `newsletter check` finding (without the live link check),
    validation warnings included; a failing check never takes the preview down."""
    try:
        report = check_issue(loaded, project, rendered=rendered)
    except NewsletterError as error:
        return [("error", line) for line in error.lines()]
    except Exception as error:
        log.exception("newsletter check failed")
        return [("error", f"newsletter check could not run: {type(error).__name__}: {error}")]
    return [(problem.severity, problem.format()) for problem in report.problems]


# --------------------------------------------------------------------------- live state


class LiveIssue:
    """The current snapshot, re-rendered on change and broadcast to open pages."""

    def __init__(self, project: Project, issue_path: Path) -> None:
        self.root = project.root
        self.issue_path = issue_path
        self.outbox_dir = project.outbox_dir
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
            snapshot = await anyio.to_thread.run_sync(build_snapshot, self.root, self.issue_path, version)
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


# --------------------------------------------------------------------------- web app


def _with_base_target(html: str) -> str:
    """Links in the preview open in a new tab instead of replacing the email in its frame."""
    marker = "<head>"
    index = html.lower().find(marker)
    tag = '<base target="_blank">'
    if index < 0:
        return tag + html
    return html[: index + len(marker)] + tag + html[index + len(marker):]


NO_STORE = {"Cache-Control": "no-store"}
# The email frames run no script at all; a stray <script> in a template stays inert.
EMAIL_CSP = {"Content-Security-Policy": "default-src 'none'; img-src * data:; style-src 'unsafe-inline' *; "
             "font-src * data:", **NO_STORE}


def create_preview_app(project: Project, issue_path: Path) -> Starlette:
    """The preview web app for one issue of one project (serve it on 127.0.0.1 only)."""
    live = LiveIssue(project, Path(issue_path))
    templates = Jinja2Templates(env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(PAGE_DIR), autoescape=True, undefined=jinja2.StrictUndefined,
    ))

    async def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {
            "state": live.snapshot.public(), "issue_file": str(issue_path),
            "state_json": json.dumps(live.snapshot.public(), ensure_ascii=False),
        }, headers=NO_STORE)

    async def email_html(request: Request) -> Response:
        snapshot = live.snapshot
        if not snapshot.ok:
            return HTMLResponse("<!doctype html><title>error</title>", status_code=409, headers=EMAIL_CSP)
        return HTMLResponse(_with_base_target(snapshot.html), headers=EMAIL_CSP)

    async def email_text(request: Request) -> Response:
        return PlainTextResponse(live.snapshot.text, status_code=200 if live.snapshot.ok else 409,
                                 headers=NO_STORE)

    async def state(request: Request) -> Response:
        return JSONResponse(live.snapshot.public(), headers=NO_STORE)

    async def events(request: Request) -> Response:
        return StreamingResponse(live.events(request), media_type="text/event-stream",
                                 headers={**NO_STORE, "X-Accel-Buffering": "no"})

    async def outbox(request: Request) -> Response:
        entries, total = list_outbox(live.outbox_dir)
        return templates.TemplateResponse(request, "outbox.html", {
            "entries": entries, "total": total, "outbox_dir": str(live.outbox_dir),
            "issue_file": str(issue_path),
        }, headers=NO_STORE)

    async def outbox_message(request: Request) -> Response:
        key = request.path_params["key"]
        msg = read_outbox_message(live.outbox_dir, key)
        if msg is None:
            return PlainTextResponse(f"no message {key} in {live.outbox_dir}", status_code=404)
        return templates.TemplateResponse(request, "outbox_message.html", {
            "key": key, "quoted_key": quote(key, safe=""),
            "headers": [(name, str(value)) for name, value in msg.items()],
            "subject": str(msg.get("Subject", "")), "has_html": text_part(msg, "html") is not None,
            "text": text_part(msg, "plain"), "issue_file": str(issue_path),
        }, headers=NO_STORE)

    async def outbox_part(request: Request) -> Response:
        msg = read_outbox_message(live.outbox_dir, request.path_params["key"])
        html = text_part(msg, "html") if msg is not None else None
        if html is None:
            return PlainTextResponse("no HTML part", status_code=404)
        return HTMLResponse(_with_base_target(html), headers=EMAIL_CSP)

    async def outbox_raw(request: Request) -> Response:
        box = open_outbox(live.outbox_dir)
        try:
            data = box.get_bytes(request.path_params["key"]) if box is not None else None
        except KeyError:
            data = None
        if data is None:
            return PlainTextResponse("no such message", status_code=404)
        return Response(data, media_type="text/plain; charset=utf-8", headers=NO_STORE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await live.refresh()
        stop = asyncio.Event()
        watcher = asyncio.create_task(live.watch(stop))
        try:
            yield
        finally:
            stop.set()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = Starlette(routes=[
        Route("/", index),
        Route("/email.html", email_html),
        Route("/email.txt", email_text),
        Route("/state.json", state),
        Route("/events", events),
        Route("/outbox", outbox),
        Route("/outbox/{key}", outbox_message),
        Route("/outbox/{key}/html", outbox_part),
        Route("/outbox/{key}/raw", outbox_raw),
        Mount("/static", StaticFiles(directory=PAGE_DIR / "static"), name="static"),
    ], lifespan=lifespan)
    app.state.live = live
    return app


# --------------------------------------------------------------------------- serving


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0: any free port), or a clear error."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise NewsletterError(f"cannot listen on {HOST}:{port}: {error.strerror}; "
                              "choose another port with --port N") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, app: Starlette) -> None:
        super().__init__(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on"))
        self.live: LiveIssue = app.state.live

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Event streams never end by themselves; uvicorn would wait for them until its timeout.
        await self.live.close()
        await super().shutdown(sockets)


def url_of(sock: socket.socket) -> str:
    return f"http://{HOST}:{sock.getsockname()[1]}/"


def run_preview(project: Project, issue_path: Path, *, port: int = DEFAULT_PORT, open_browser: bool = True,
                announce: Callable[[str], None] | None = None) -> None:
    """Serve the preview until interrupted (Ctrl-C); open the browser once it answers."""
    issue_path = Path(issue_path)
    if not issue_path.is_file():
        raise NewsletterError(f"{issue_path}: no such file")
    sock = bind(port)
    url = url_of(sock)
    if announce is not None:
        announce(url)
    server = _Server(create_preview_app(project, issue_path))
    if open_browser:
        threading.Thread(target=_open_when_started, args=(server, url), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; stopping the preview is the normal end
    finally:
        sock.close()


def _open_when_started(server: uvicorn.Server, url: str) -> None:
    deadline = time.monotonic() + 60
    while not server.started and not server.should_exit and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.started:
        webbrowser.open(url)


@contextlib.contextmanager
def serve_in_background(app: Starlette, port: int = 0) -> Iterator[str]:
    """Run `app` on 127.0.0.1 in a thread (for tests and benchmarks); yields its URL."""
    sock = bind(port)
    server = _Server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("preview server did not start")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
