"""CLI commands: `send` (test send, dry run, send to a list / resume) and `sends ls|show`."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from newsletter.cli.common import (
    IssueFile,
    JsonOption,
    ProjectOption,
    app,
    console,
    get_project,
    plain,
    print_json,
    say,
    user_errors,
)
from newsletter.errors import NewsletterError


def escape(text: str) -> str:
    """rich markup escaped (rich.markup is loaded by the send commands only, not at start-up)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


if TYPE_CHECKING:
    from datetime import datetime

    from newsletter.delivery.lease import WorkerInfo
    from newsletter.delivery.plan import SendPlan
    from newsletter.delivery.records import SendInfo
    from newsletter.delivery.report import SendReport

sends_app = typer.Typer(help="History of sends: per recipient status and SMTP replies.",
                        no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(sends_app, name="sends")


@app.command()
def send(
    file: IssueFile,
    to: Annotated[list[str] | None, typer.Option(
        "--to", help="Test send to this address (repeatable): subject prefixed [TEST], no journal.",
        show_default=False)] = None,
    list_name: Annotated[str | None, typer.Option(
        "--list", "-l", help="Send to the subscribed members of this list (re-run to resume).",
        show_default=False)] = None,
    segment: Annotated[str | None, typer.Option(
        "--segment", "-s", help="Only the members of the list in this segment (\\[segments.NAME] "
        "in newsletter.toml); a send of its own, resumed with the same --segment.",
        show_default=False)] = None,
    at: Annotated[str | None, typer.Option(
        "--at", help="Schedule the send to the list for this time in the project's time zone, "
        "e.g. \"2026-03-10 08:00\"; `newsletter serve` or `newsletter worker` starts it then.",
        show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run_flag: Annotated[bool, typer.Option(
        "--dry-run", help="Write the personalised messages as .eml files instead of sending.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory for --dry-run (default outbox/dry-run/<slug>/, never served).",
        show_default=False)] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, max=100, help="SMTP connections (default delivery.concurrency).",
        show_default=False)] = None,
    rate: Annotated[float | None, typer.Option(
        "--rate", min=0, help="Messages per second across all connections, 0 = unlimited "
        "(default delivery.rate).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Resume even though the issue changed since the send started.")] = False,
    project: ProjectOption = None,
) -> None:
    """Send an issue: a test send (--to), a dry run, or to a list (re-running resumes).

    Example: [bold]newsletter send issues/2026-02.yaml --list news[/bold]
    """
    if bool(to) == bool(list_name):
        say("give either --to ADDR (test send) or --list NAME", err=True)
        raise typer.Exit(2)
    if segment is not None and not list_name:
        say("--segment needs --list NAME (the list the segment is of)", err=True)
        raise typer.Exit(2)
    if at is not None and (to or dry_run_flag or out or force or concurrency or rate is not None):
        say("--at goes with --list NAME (and --segment, --yes) only", err=True)
        raise typer.Exit(2)
    proj = get_project(project, near=file)
    with user_errors():
        if to:
            replies = proj.send_test(file, to)
            failed = [(a, r) for a, r in replies if not r.ok]
            for address, reply in replies:
                mark = "[green]sent[/green]" if reply.ok else "[red]refused[/red]"
                console.print(f"{mark} {escape(address)}: {escape(str(reply))}")
            if failed:
                raise typer.Exit(1)
            return
        assert list_name is not None
        plan = proj.plan_send(file, list_name, segment=segment, concurrency=concurrency, rate=rate)
        try:
            if dry_run_flag:
                _dry_run(plan, out)
                return
            if at is not None:  # recorded now; `serve` / `worker` start it when it is due
                from newsletter.cli.schedule_cmds import schedule_planned

                schedule_planned(plan, at, yes=yes)
                return
            plan.refuse_if_scheduled()  # `send --at` recorded it: cancel first, one line, exit 1
            plan.refuse_if_busy()  # another process is sending it: one line, exit 1
            from newsletter.delivery.approval import require

            require(plan.store, proj, plan.issue.loaded, plan.issue.rendered)  # require_approval
            if plan.nothing_to_do:
                assert plan.existing is not None
                say(f"Send #{plan.existing.id} of {escape(plan.issue.rendered.slug)} to "
                    f"{escape(plan.existing.audience)} is complete ({plan.existing.counts['sent']} "
                    "sent) and nobody has joined the list since: nothing to send.")
                return
            _summary(plan)
            caution = plan.reputation_warning  # also with --yes: it is about the sender's standing
            if caution:
                say(f"[yellow]{escape(caution)}[/yellow]", err=True)
            if not yes and not typer.confirm("Send now?", default=False):
                console.print("Nothing sent.")
                raise typer.Exit(1)
            report = _send_with_progress(plan, force)
        finally:
            plan.store.close()
    _final_report(report)
    if report.status == "paused":
        raise typer.Exit(1)
    if report.status == "interrupted":
        raise typer.Exit(130)


def _dry_run(plan: "SendPlan", out: Path | None) -> None:
    """Write the messages; say where, and who was left out and why."""
    from newsletter.delivery.dryrun import dry_run

    for warning in plan.issue.warnings:
        plain(warning, err=True)
    unbuildable: list[str] = []
    directory, count = dry_run(plan, out, unbuildable)
    to = f" for {escape(plan.audience)}" if plan.segment is not None else ""
    say(f"Wrote {count} personalised message(s){to} to {escape(str(directory))}; nothing was sent.")
    others = {status: n for status, n in plan.counts.items() if status != "subscribed" and n}
    if others:
        say("Left out (not subscribed): " + ", ".join(f"{n} {status}" for status, n in others.items())
            + ".")
    for line in unbuildable:
        say(f"Left out: {escape(line)}", err=True)


def _summary(plan: "SendPlan") -> None:
    for warning in plan.issue.warnings:
        say(escape(warning), err=True)
    mailing_list = plan.mailing_list
    title = f" ({mailing_list.title})" if mailing_list.title else ""
    say(f"[bold]Subject:[/bold]    {escape(plan.issue.rendered.subject)}")
    say(f"[bold]List:[/bold]       {escape(mailing_list.name + title)}")
    if plan.segment is not None:
        segment = plan.segment
        about = f" ({segment.title})" if segment.title else ""
        say(f"[bold]Segment:[/bold]    {escape(segment.name + about)}: "
            f"{escape(' '.join(segment.where.split()))}")
    of_all = f" of {plan.counts.get('subscribed', 0)}" if plan.segment is not None else ""
    paused = f", {plan.paused} of them paused (skipped)" if plan.paused else ""
    say(f"[bold]Recipients:[/bold] {plan.recipients}{of_all} subscribed{paused}")
    if plan.sent_elsewhere:
        say(f"[yellow]{plan.sent_elsewhere} of them got this issue from another send to the list "
            "already[/yellow]: not sent again (`sends ls`).")
    rate = f"{plan.rate:g}/s" if plan.rate else "unlimited"
    from newsletter.delivery.transport import MaildirTransport

    # Connections are SMTP sessions; the Maildir outbox has none.
    local = isinstance(plan.transport, MaildirTransport)
    sessions = "" if local else f"{plan.concurrency} connection(s), "
    say(f"[bold]Transport:[/bold]  {escape(plan.transport.description)} — {sessions}rate {rate}")
    existing = plan.existing
    if existing is not None:
        c = existing.counts
        if plan.segment is not None and existing.segment_where not in (None, plan.segment.where):
            say(f"[red]The segment's condition changed since send #{existing.id} started[/red]: it "
                f"was {escape(existing.segment_where or '')} (use --force to go on with the "
                "members the new one picks).")
        live = existing.live_workers()
        if live:  # PostgreSQL (elsewhere `refuse_if_busy` has refused): this run joins them
            say(f"[yellow]Joining send #{existing.id}[/yellow], running now: "
                + escape("; ".join(f"pid {w.pid} on host {w.host} since {_at(w.started_at)}"
                                   for w in live))
                + f". {c['pending'] + c['failed_temporary']} still open are shared out between "
                "the runs; nobody gets the issue twice.")
            return
        if existing.status == "finished" and existing.open_rows == 0:
            say(f"[yellow]Send #{existing.id} finished earlier[/yellow] ({c['sent']} sent): "
                f"{plan.joined_since} member(s) joined the list since and get it now; "
                "nobody gets it twice.")
            return
        say(f"[yellow]Resuming send #{existing.id} ({existing.status}):[/yellow] {c['sent']} already "
             f"sent and not sent again, {c['pending'] + c['failed_temporary']} to (re)try"
             + (f", {c['sending']} in flight at the interruption (sent again; may be duplicated)"
                if c["sending"] else ""))
        if existing.reason:
            say(f"It stopped: {escape(existing.reason)}")
        if existing.content_hash != plan.issue.content_hash:
            say("[red]The issue changed since this send started[/red] (use --force to "
                 "send the new version to the rest).")


def _send_with_progress(plan: "SendPlan", force: bool) -> "SendReport":
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from newsletter.delivery.report import SendProgress
    from newsletter.delivery.sender import run_send

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} msg/s" if speed else "– msg/s", style="progress.data.speed")

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console.rich, transient=False) as bar:
        task = bar.add_task("Sending", total=None)

        def update(p: SendProgress) -> None:
            extra = f" ({p.failed} failed, {p.skipped} skipped, {p.retrying} retrying)" if (
                p.failed or p.skipped or p.retrying) else ""
            bar.update(task, total=p.total, completed=p.done, description="Sending" + extra)

        # The VERP tag's format lives in the feedback package, above delivery: handed in here.
        return run_send(plan, force=force, progress=update)


def _final_report(report: "SendReport") -> None:
    counts = (f"{report.sent} sent, {report.failed_permanent} failed permanently "
              f"({report.bounced} bounced), {report.failed_temporary} failed temporarily, "
              f"{report.skipped} skipped (no longer subscribed), {report.pending} pending.")
    if report.status == "running":  # other runs still send it: the last of them finishes it
        say(f"[cyan]Send #{report.send_id} running[/cyan]: this run found nothing more to claim "
            f"and ended in {report.seconds:.1f} s ({report.run_sent} sent by it); "
            + escape(_still_sending(report.others))
            + f" and finishes the send. So far: {counts}")
        return
    color = {"finished": "green", "paused": "yellow", "interrupted": "yellow"}[report.status]
    say(f"[{color}]Send #{report.send_id} {report.status}[/{color}] in {report.seconds:.1f} s: "
        + counts)
    if report.joined or report.others:
        say(f"This run sent {report.run_sent}; the others of the send are listed by "
            f"`newsletter sends show {report.send_id}`.")
    if report.others:  # this run stopped early; the send goes on
        say(escape(_still_sending(report.others)) + " and finishes the send.", err=True)
    if report.reason:
        say(escape(report.reason), err=True)
    if report.possibly_duplicated:
        say(f"{len(report.possibly_duplicated)} recipient(s) were in flight at an "
             "interruption and may have got the issue twice: "
             + escape(", ".join(report.possibly_duplicated)))
    if (report.failed_temporary or report.pending) and not report.others:
        say("Re-run the same command to retry the rest; nobody gets the issue twice.")


def _still_sending(others: "list[WorkerInfo]") -> str:
    """`pid 12 on host x is still sending it (3 in flight)`, for the runs still live."""
    runs = [f"pid {w.pid} on host {w.host}" for w in others]
    verb = "is" if len(runs) == 1 else "are"
    return f"{' and '.join(runs)} {verb} still sending it"


@sends_app.command("ls")
def sends_ls(json: JsonOption = False, project: ProjectOption = None) -> None:
    """List every send with its counts.

    Example: [bold]newsletter sends ls[/bold]
    """
    from newsletter.delivery.records import JournalReader

    with user_errors(), get_project(project) as proj:
        infos = JournalReader(proj.store).all()
    if json:
        print_json([i.as_dict() for i in infos])
        return
    if not infos:
        console.print("No sends yet.")
        return
    from rich.table import Table

    # Hard / Soft / Compl.: bounces and complaints reported after the send (the feedback ledger).
    table = Table("ID", "Issue", "List", "Status", "Sent", "Failed", "Skipped", "Open", "Dup.",
                  "Hard", "Soft", "Compl.", "Started (UTC)")
    for i in infos:
        c, f = i.counts, i.feedback
        table.add_row(str(i.id), escape(i.issue_slug), escape(i.audience), i.status,
                      f"{c['sent']}/{c['total']}", str(c["failed_permanent"] + c["failed_temporary"]),
                      str(c["skipped"]), str(c["pending"] + c["sending"]),
                      str(len(i.possibly_duplicated)), str(f["hard"]), str(f["soft"]),
                      str(f["complaint"]), f"{i.created_at:%Y-%m-%d %H:%M}")
    console.print(table)
    # Reasons and addresses are too long for the table: one whole line each below it.
    for i in infos:
        if i.status == "running":
            say(f"#{i.id} running: {escape(_runner(i))}")
        if i.status == "scheduled" and i.scheduled_at is not None:
            from newsletter.delivery.schedule import local_time

            zone = proj.settings.newsletter.timezone
            say(f"#{i.id} scheduled for {local_time(i.scheduled_at, zone)} "
                f"({i.scheduled_at:%Y-%m-%d %H:%M} UTC); `newsletter sends cancel {i.id}` calls it off")
        if i.reason:
            say(f"#{i.id} {i.status}: {escape(i.reason)}")
        if i.possibly_duplicated:
            say(f"#{i.id} possibly duplicated (in flight at an interruption): "
                 + escape(", ".join(i.possibly_duplicated)))


@sends_app.command("show")
def sends_show(
    send_id: Annotated[int, typer.Argument(help="The send's ID (see `sends ls`).", show_default=False)],
    json: JsonOption = False,
    project: ProjectOption = None,
) -> None:
    """Show one send: counts, and per recipient status, SMTP reply and time.

    Example: [bold]newsletter sends show 1 --json[/bold]
    """
    from newsletter.delivery.records import JournalReader

    with user_errors(), get_project(project) as proj:
        journal = JournalReader(proj.store)
        info = journal.get(send_id)
        if info is None:
            raise NewsletterError(f"no send with ID {send_id}; see `newsletter sends ls`")
        rows = journal.deliveries(send_id)
    if json:
        print_json({**info.as_dict(), "deliveries": [r.as_dict() for r in rows]})
        return
    c = info.counts
    say(f"[bold]Send #{info.id}[/bold] {escape(info.issue_slug)} → {escape(info.audience)}: "
         f"{info.status}, via {escape(info.transport)}")
    if info.reason:
        say(f"[yellow]Reason:[/yellow] {escape(info.reason)}")
    say(f"Subject: {escape(info.subject)}")
    say(f"{c['total']} recipients: {c['sent']} sent, {c['failed_permanent']} failed "
         f"permanently, {c['failed_temporary']} failed temporarily, {c['skipped']} skipped, "
         f"{c['pending']} pending, {c['sending']} in flight")
    f = info.feedback
    say(f"Reported since: {f['hard']} hard bounce(s), {f['soft']} soft bounce(s), "
        f"{f['complaint']} complaint(s)" + _rates(info))
    if info.possibly_duplicated:
        say("[yellow]Possibly duplicated[/yellow] (in flight at an interruption): "
             + escape(", ".join(info.possibly_duplicated)))
    if info.workers:
        from newsletter.db.schema import utcnow

        now = utcnow()
        say("Workers (one per run; on PostgreSQL several at once share a send out):")
        for w in info.workers:
            say(f"  {escape(_worker_line(w, now))}")
    from rich.table import Table

    table = Table()
    # Addresses stay whole (to be copied); the reply wraps instead.
    widest = max((len(r.email) for r in rows), default=10)
    table.add_column("Recipient", no_wrap=True, min_width=min(widest, 60))
    table.add_column("Status")
    table.add_column("Attempts", justify="right")
    table.add_column("SMTP reply", overflow="fold")
    table.add_column("Time (UTC)")
    for r in rows:
        table.add_row(escape(r.email), r.status + (" *" if r.possibly_duplicated else "")
                      + (f", {_FEEDBACK[r.feedback]}" if r.feedback in _FEEDBACK else ""),
                      str(r.attempts), escape(r.smtp_reply or ""), f"{r.updated_at:%Y-%m-%d %H:%M:%S}")
    console.print(table)


_FEEDBACK = {"hard": "hard bounce", "soft": "soft bounce", "complaint": "complaint"}


def _rates(info: "SendInfo") -> str:
    """` (complaint rate 0.2 %, hard-bounce rate 1 % of 1000 sent)`, or nothing before a send."""
    from newsletter.delivery.reputation import percent, rates

    sent = info.counts["sent"]
    if not sent:
        return ""
    complaint_rate, hard_rate = rates(info)
    return (f" (complaint rate {percent(complaint_rate)}, hard-bounce rate {percent(hard_rate)} "
            f"of {sent} sent)")


def _at(moment: "datetime") -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _worker_line(w: "WorkerInfo", now: "datetime") -> str:
    """One run of a send: who, since when, its last heartbeat, what it sent and has in flight,
    and whether it holds its lease."""
    state = w.state(now)
    line = (f"pid {w.pid} on host {w.host}: started {_at(w.started_at)}, last heartbeat "
            f"{_at(w.heartbeat_at)}, {w.sent} sent, {w.in_flight} in flight, ")
    if state == "live":
        return line + f"live (lease until {_at(w.lease_expires_at)})"
    if state == "expired":
        return line + (f"expired (lease ran out {_at(w.lease_expires_at)}: the process stopped "
                       "without ending its run)")
    assert w.released_at is not None
    return line + f"ended {_at(w.released_at)}"


def _runner(info: "SendInfo") -> str:
    """Who runs a `running` send, or that nobody does any more."""
    from newsletter.db.schema import utcnow

    now = utcnow()
    live = info.live_workers(now)
    if live:
        return "by " + " and ".join(
            f"pid {w.pid} on host {w.host} since {_at(w.started_at)}, last heartbeat "
            f"{_at(w.heartbeat_at)}" for w in live)
    last = info.workers[-1] if info.workers else None
    who = f" (pid {last.pid} on host {last.host})" if last is not None else ""
    return (f"but its process{who} is gone: no heartbeat for a whole lease; re-run the same "
            "command to resume")
