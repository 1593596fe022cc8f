"""The `newsletter` command line: thin typer commands over the library.

Each area registers its commands from its own module (`issue_cmds`, `store_cmds`,
…) on the shared `app`; the helpers here turn `NewsletterError` into exit code 1
with a readable message on stderr and no traceback.
"""

from newsletter.cli.common import app, main

# Importing the command modules registers their commands on `app`.
from newsletter.cli import (  # noqa: F401  isort: skip
    bounces_cmds,
    build_cmds,
    db_cmds,
    issue_cmds,
    preview_cmds,
    schedule_cmds,
    segment_cmds,
    send_cmds,
    approval_cmds,
    serve_cmds,
    store_cmds,
)

__all__ = ["app", "main"]
