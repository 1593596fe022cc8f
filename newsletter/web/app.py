"""`newsletter serve`: the public endpoint — subscribe, confirm, unsubscribe, archive.

Routes and wiring only; everything here faces the internet (see docs/web.md):

* `newsletter.web.site`: the handlers (unsubscribe incl. RFC 8058 one-click, double opt-in
  sign-up, confirmation, health);
* `newsletter.web.archive`: `/archive/`, an allow-list of what `newsletter build` wrote;
* `newsletter.web.security`: the middleware (body limit, security headers, relative redirects,
  token-free access logs), trusted proxies, rate limits, CSRF;
* `newsletter.web.pages`: the Jinja environment and the pages; the words are in the templates;
* `newsletter.web.confirmation`: the confirmation mail.

A database that fails under a request (locked past the busy timeout, disk full, damaged file)
raises `DatabaseError` (`newsletter.db.engine`); the app answers with the 503 error page and
logs the one-line reason, not a traceback: the operator needs the file and the remedy.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.db.engine import DatabaseError
from newsletter.project import Project
from newsletter.web.archive import Archive
from newsletter.web.hooks import HOOKS_MAX_BODY, HOOKS_PREFIX, Hooks
from newsletter.web.pages import ERROR_PAGES
from newsletter.web.preferences import PreferenceCentre
from newsletter.web.security import Guard, log_path
from newsletter.web.site import Site

log = logging.getLogger("newsletter.serve")

# Seconds an idle keep-alive connection stays open. A client (or reverse proxy) that reuses an
# idle connection must give it up sooner: at this moment the server closes it, and a request
# sent just then is lost (the client sees a reset; a POST is not retried).
KEEP_ALIVE_SECONDS = 5


def create_app(project: Project, *, proxy_headers: bool = True, scheduler: bool = False) -> Starlette:
    """The ASGI app of `newsletter serve` for one project.

    With `proxy_headers`, X-Forwarded-For is believed from peers in `serve.trusted_proxies`.
    With `scheduler`, the process also starts scheduled sends when due (`delivery/schedule.py`,
    a thread of its own from start-up to shutdown).
    """
    site = Site(project, proxy_headers=proxy_headers)
    archive = Archive(project.dist_dir, not_found=lambda: site.pages.error(404))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return site.pages.error(status if status in ERROR_PAGES else 404)

    async def database_failed(request: Request, exc: Exception) -> Response:
        # Expected operational failures, not bugs: one line with the file and what to do.
        log.error("%s %s: %s", request.method, log_path(request.url.path), exc)
        return site.pages.error(503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        background = None
        if scheduler:
            from newsletter.delivery.schedule import start_scheduler

            background = start_scheduler(project)
        yield
        if background is not None:
            background.stop()
        # After the last request: the writer commits what is queued, then the database closes.
        await asyncio.to_thread(site.close)

    routes = [
        Route("/healthz", site.healthz, methods=["GET"]),
        Route("/u/test", site.unsubscribe_test_page, methods=["GET", "POST"]),
        Route("/u/{token}", site.unsubscribe_page, methods=["GET", "POST"]),
        Route("/subscribe", site.subscribe_page, methods=["GET", "POST"]),
        Route("/subscribe/{list}", site.subscribe_page, methods=["GET", "POST"]),
        Route("/confirm/{token}", site.confirm_page, methods=["GET", "POST"]),
        *PreferenceCentre(site).routes(),  # /p/{token}…: the preference centre
        Route("/archive", archive.index_redirect, methods=["GET"]),
        Route("/archive/{path:path}", archive.serve_file, methods=["GET"]),
        Route("/hooks/{provider}", Hooks(site).hook, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found, 400: not_found,
                                        DatabaseError: database_failed})
    app.add_middleware(Guard, max_body=project.settings.serve.max_body_bytes,
                       larger_bodies={HOOKS_PREFIX: HOOKS_MAX_BODY},
                       hsts=site.base_url.startswith("https://"), error_page=site.pages.error_html)
    app.state.site = site
    return app


def run(project: Project, host: str, port: int, *, proxy_headers: bool = True) -> None:
    """Serve until interrupted (the body of `newsletter serve`)."""
    server = make_server(project, host, port, proxy_headers=proxy_headers)
    server.run()


def _config(project: Project, proxy_headers: bool, log_level: str) -> dict[str, Any]:
    """uvicorn's settings, the same for one process and for workers."""
    trusted = project.settings.serve.trusted_proxies
    return {
        "access_log": False, "log_level": log_level, "proxy_headers": proxy_headers and bool(trusted),
        "forwarded_allow_ips": ",".join(trusted) or None, "server_header": False,
        "limit_concurrency": 1000, "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "h11_max_incomplete_event_size": 16384,
    }


def make_server(project: Project, host: str, port: int, *, proxy_headers: bool = True,
                log_level: str = "info", scheduler: bool = False) -> Any:
    """A uvicorn server for the project. Uvicorn's own access log is off: it would log tokens.

    Opens the database (raises `StoreError` / `DatabaseError` if it cannot be used), so a
    broken one stops `newsletter serve` before it listens."""
    import uvicorn

    config = uvicorn.Config(create_app(project, proxy_headers=proxy_headers, scheduler=scheduler),
                            host=host, port=port,
                            **_config(project, proxy_headers, log_level))
    config.load()  # uvicorn's protocol modules too, before `settle_heap`
    settle_heap()
    return uvicorn.Server(config)


def settle_heap() -> None:
    """Keep what start-up built out of the garbage collector's way for good (`gc.freeze`).

    The modules, the templates, SQLAlchemy's tables and statements live as long as the process,
    yet every full collection walked all of them again: under load one ran every second or so
    and held the GIL — the event loop and the writer — for 40–70 ms, the p99 of one-clicks and
    of /healthz. Frozen, a full collection walks only what was allocated since."""
    gc.collect()
    gc.freeze()


# `serve --workers N`: how a worker process finds its project (children are spawned, not forked:
# no thread or connection of the parent crosses over). Not NEWSLETTER_*: not a setting.
WORKER_ENV = "NL_SERVE_WORKER"


def worker_app() -> Starlette:
    """The app of one worker process (uvicorn's factory): the project named in `WORKER_ENV`;
    its settings come from the same files and environment as the parent's."""
    from newsletter.project import open_project

    root, proxy_headers, *rest = json.loads(os.environ[WORKER_ENV])
    app = create_app(open_project(root, exact=True), proxy_headers=proxy_headers,
                     scheduler=bool(rest and rest[0]))
    settle_heap()  # uvicorn has loaded its modules already: it is calling this factory
    return app


def run_workers(project: Project, host: str, port: int, workers: int, *,
                proxy_headers: bool = True, log_level: str = "info", scheduler: bool = False) -> None:
    """Serve with `workers` processes on one listening socket (uvicorn's supervisor restarts a
    worker that dies). Each process has its own writer and connections; rate limits are shared
    through the database. Opens the database once first, so a broken one stops here."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from newsletter.audience.store import open_store

    open_store(project).close()  # migrations once, and errors before anything listens
    os.environ[WORKER_ENV] = json.dumps([str(project.root), proxy_headers, scheduler])
    # The children are new interpreters: they get our loggers (access log, errors) through
    # uvicorn's logging config, formatted like uvicorn's own lines.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["newsletter"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # Which worker wrote a line (the access log, an error): its process id.
    log_config["formatters"]["default"]["fmt"] = "%(levelprefix)s [%(process)d] %(name)s: %(message)s"
    uvicorn.run(f"{__name__}:worker_app", factory=True, host=host, port=port, workers=workers,
                log_config=log_config, **_config(project, proxy_headers, log_level))


__all__ = ["KEEP_ALIVE_SECONDS", "WORKER_ENV", "create_app", "make_server", "run", "run_workers",
           "worker_app"]
