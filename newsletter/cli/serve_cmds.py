"""CLI command: serve — the public endpoint (subscribe, confirm, unsubscribe, archive)."""

import logging
from typing import Annotated

import typer

from newsletter.cli.common import ProjectOption, app, console, get_project, user_errors


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: serve.host).",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port, 8000).",
                                             show_default=False)] = None,
    proxy_headers: Annotated[bool, typer.Option(
        "--proxy-headers/--no-proxy-headers",
        help="Trust X-Forwarded-For/-Proto from the addresses in serve.trusted_proxies "
             "(run behind a TLS reverse proxy).")] = True,
    workers: Annotated[int, typer.Option(
        min=1, help="Worker processes (each with its own database writer; rate limits are "
                    "shared through the database).")] = 1,
    scheduler: Annotated[bool, typer.Option(
        "--scheduler/--no-scheduler",
        help="Start scheduled sends (`send --at`) when due, in each worker process; "
             "--no-scheduler on machines that should not send.")] = True,
    project: ProjectOption = None,
) -> None:
    """Run the public endpoint: subscribe (double opt-in), confirm, unsubscribe incl. RFC 8058
    one-click, the web archive from dist/ and /healthz; and start scheduled sends when due.

    Example: [bold]newsletter serve --host 127.0.0.1 --port 8000[/bold]
    """
    from newsletter.web.app import make_server, run_workers

    proj = get_project(project)
    host = host or proj.settings.serve.host
    port = port or proj.settings.serve.port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serving = (f"Serving {proj.settings.newsletter.title} on http://{host}:{port} "
               f"(public URL {proj.settings.newsletter.base_url})")
    if workers > 1:
        console.print(f"{serving} with {workers} worker processes; Ctrl+C stops.")
        with user_errors():
            # Opens the database first: a broken one is one line and exit 1.
            run_workers(proj, host, port, workers, proxy_headers=proxy_headers, scheduler=scheduler)
        return
    with user_errors():
        # Opens the database first: a broken one is one line and exit 1, never "Serving …".
        server = make_server(proj, host, port, proxy_headers=proxy_headers, scheduler=scheduler)
    console.print(f"{serving}; Ctrl+C stops.")
    with user_errors():
        server.run()
