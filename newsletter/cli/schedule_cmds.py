"""CLI commands around scheduled sends: `sends cancel ID` and `worker` (the scheduler in the
foreground, for systemd). `send --at` is `send_cmds.py`'s; the logic is
`delivery/schedule.py`."""

import logging
import signal
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from newsletter.cli.common import ProjectOption, app, console, get_project, say, user_errors
from newsletter.cli.send_cmds import _summary, escape, sends_app

if TYPE_CHECKING:
    from newsletter.delivery.plan import SendPlan


def schedule_planned(plan: "SendPlan", at: str, *, yes: bool) -> None:
    """`send FILE --list X --at "…"`: the summary, the time, the question, then the record."""
    from newsletter.delivery.approval import require
    from newsletter.delivery.schedule import local_time, parse_at, refuse_existing, schedule_send

    zone = plan.project.settings.newsletter.timezone
    due = parse_at(at, zone)
    refuse_existing(plan)
    require(plan.store, plan.project, plan.issue.loaded, plan.issue.rendered)  # before asking
    _summary(plan)
    say(f"[bold]At:[/bold]         {escape(local_time(due, zone))} ({due:%Y-%m-%d %H:%M} UTC)")
    if not yes and not typer.confirm("Schedule it?", default=False):
        console.print("Nothing scheduled.")
        raise typer.Exit(1)
    info = schedule_send(plan, due)
    say(f"Scheduled send #{info.id} of {escape(info.issue_slug)} to {escape(info.audience)} for "
        f"{escape(local_time(due, zone))}. A running `newsletter serve` or `newsletter worker` "
        f"starts it then; `newsletter sends cancel {info.id}` calls it off.")


@sends_app.command("cancel")
def sends_cancel(
    send_id: Annotated[int, typer.Argument(help="The send's ID (see `sends ls`).", show_default=False)],
    project: ProjectOption = None,
) -> None:
    """Cancel a scheduled send that has not started (nothing is sent; `send --at` can schedule
    it again).

    Example: [bold]newsletter sends cancel 3[/bold]
    """
    from newsletter.delivery.schedule import cancel_send, local_time

    with user_errors(), get_project(project) as proj:
        info = cancel_send(proj.store, send_id)
    when = local_time(info.scheduled_at, proj.settings.newsletter.timezone) if info.scheduled_at else "?"
    say(f"Cancelled send #{info.id} of {escape(info.issue_slug)} to {escape(info.audience)} "
        f"(was scheduled for {when}); nothing was sent.")


@app.command()
def worker(project: ProjectOption = None) -> None:
    """Start scheduled sends when they are due (`send --at`), in the foreground, until stopped
    (SIGTERM or Ctrl-C: a send in progress is finished first; a second signal leaves it to be
    resumed at the next start). For a machine that sends but does not run `newsletter serve`,
    or with `serve --no-scheduler`; run it under systemd (README, Deployment).

    Example: [bold]newsletter worker --project /srv/newsletter[/bold]
    """
    from newsletter.delivery.schedule import Background, Scheduler

    proj = get_project(project)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with user_errors():
        proj.store.schema_version()  # the database first: a broken one is one line and exit 1
    runner = Background(Scheduler(proj)).start()
    stop = threading.Event()
    signals = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) == 1:
            logging.getLogger("newsletter.schedule").info(
                "worker: stopping (%s); a send in progress is finished first",
                signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    while not stop.wait(3600):
        pass
    runner.stop_event.set()
    while runner.thread is not None and runner.thread.is_alive() and len(signals) < 2:
        runner.thread.join(0.2)
    runner.stop(wait=0)  # a second signal: leave a running send to the next start
    proj.close()
