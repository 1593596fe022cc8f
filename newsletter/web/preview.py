"""`newsletter preview`: a local web page showing an issue as readers will see it.

The server renders the issue once per change, not per request: a watchfiles task
watches the issue file, the project's templates/ and newsletter.toml, re-renders in
a worker thread and pushes the new state to every open page over server-sent
events (`newsletter.web.preview_live`). The page then swaps only the email content, so the
chosen view and the scroll position survive. A render that fails becomes a list of
``FILE:LINE:COL: field: message`` lines (the text `newsletter validate` prints)
shown in place of the email; the next good save brings the email back
(`newsletter.web.preview_snapshot`).

A second page lists the local outbox (the Maildir that `send` writes to when no
SMTP host is configured), so the preview doubles as a local test inbox.

This module: the routes, and serving them on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import webbrowser
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from newsletter.delivery.outbox import list_outbox, open_outbox, read_outbox_message, text_part
from newsletter.errors import NewsletterError
from newsletter.project import Project
from newsletter.render.templates import environment, render
from newsletter.web.archive import IMAGE_NAME, archive_image, image_headers
from newsletter.web.preview_live import LiveIssue

HOST = "127.0.0.1"  # the preview shows unpublished drafts: never listen beyond this machine
DEFAULT_PORT = 8025
STATIC_DIR = Path(__file__).parent.parent / "templates" / "preview" / "static"


# --------------------------------------------------------------------------- web app


def _with_base_target(html: str) -> str:
    """Links in the preview open in a new tab instead of replacing the email in its frame."""
    marker = "<head>"
    index = html.lower().find(marker)
    tag = '<base target="_blank">'
    if index < 0:
        return tag + html
    return html[: index + len(marker)] + tag + html[index + len(marker):]


def _local_images(html: str, archive_url: str) -> str:
    """The mail's local images (`{base_url}/archive/<slug>/<name>`, online once built and
    deployed) from the preview itself, which serves them from the build folder."""
    if not archive_url:
        return html
    pattern = re.compile(rf'src="{re.escape(archive_url)}([^"/]+/{IMAGE_NAME.pattern})"')
    return pattern.sub(r'src="/archive/\1"', html)


NO_STORE = {"Cache-Control": "no-store"}
# The email frames run no script at all; a stray <script> in a template stays inert.
EMAIL_CSP = {"Content-Security-Policy": "default-src 'none'; img-src * data:; style-src 'unsafe-inline' *; "
             "font-src * data:", **NO_STORE}


def create_preview_app(project: Project, issue_path: Path, sample: str | None = None) -> Starlette:
    """The preview web app for one issue of one project (serve it on 127.0.0.1 only)."""
    live = LiveIssue(project, Path(issue_path), sample)
    env = environment(project)  # the one Jinja environment; the preview's pages are templates/preview/*
    archive_url = f"{project.settings.newsletter.base_url}/archive/"

    def framed(html: str) -> str:
        """An email as the preview's frames show it: links open a tab, local images load here."""
        return _with_base_target(_local_images(html, live.snapshot.archive_url or archive_url))

    def page(name: str, **values: Any) -> Response:
        return HTMLResponse(render(env, f"preview/{name}", values), headers=NO_STORE)

    async def index(request: Request) -> Response:
        state = live.snapshot.public()
        return page("index.html", state=state, issue_file=str(issue_path),
                    state_json=json.dumps(state, ensure_ascii=False))

    async def email_html(request: Request) -> Response:
        snapshot = live.snapshot
        if not snapshot.ok:
            return HTMLResponse("<!doctype html><title>error</title>", status_code=409, headers=EMAIL_CSP)
        return HTMLResponse(framed(snapshot.html), headers=EMAIL_CSP)

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
        return page("outbox.html", entries=entries, total=total, outbox_dir=str(live.outbox_dir),
                    issue_file=str(issue_path))

    async def outbox_message(request: Request) -> Response:
        key = request.path_params["key"]
        msg = read_outbox_message(live.outbox_dir, key)
        if msg is None:
            return PlainTextResponse(f"no message {key} in {live.outbox_dir}", status_code=404)
        return page("outbox_message.html", key=key, quoted_key=quote(key, safe=""),
                    headers=[(name, str(value)) for name, value in msg.items()],
                    subject=str(msg.get("Subject", "")), has_html=text_part(msg, "html") is not None,
                    text=text_part(msg, "plain"), issue_file=str(issue_path))

    async def outbox_part(request: Request) -> Response:
        msg = read_outbox_message(live.outbox_dir, request.path_params["key"])
        html = text_part(msg, "html") if msg is not None else None
        if html is None:
            return PlainTextResponse("no HTML part", status_code=404)
        return HTMLResponse(framed(html), headers=EMAIL_CSP)

    async def outbox_raw(request: Request) -> Response:
        box = open_outbox(live.outbox_dir)
        try:
            data = box.get_bytes(request.path_params["key"]) if box is not None else None
        except KeyError:
            data = None
        if data is None:
            return PlainTextResponse("no such message", status_code=404)
        return Response(data, media_type="text/plain; charset=utf-8", headers=NO_STORE)

    async def image(request: Request) -> Response:
        found = archive_image(project.dist_dir, request.path_params["slug"], request.path_params["name"])
        if found is None:
            return PlainTextResponse("no such image", status_code=404)
        path, media_type = found
        return FileResponse(path, media_type=media_type, headers=image_headers(media_type))

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
        Route("/archive/{slug}/{name}", image),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
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
                announce: Callable[[str], None] | None = None, sample: str | None = None) -> None:
    """Serve the preview until interrupted (Ctrl-C); open the browser once it answers."""
    issue_path = Path(issue_path)
    if not issue_path.is_file():
        raise NewsletterError(f"{issue_path}: no such file")
    sock = bind(port)
    url = url_of(sock)
    if announce is not None:
        announce(url)
    server = _Server(create_preview_app(project, issue_path, sample))
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
