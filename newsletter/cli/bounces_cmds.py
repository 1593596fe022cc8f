"""CLI commands: `bounces fetch` and `bounces ls` over newsletter.feedback."""

from enum import Enum
from typing import Annotated

import typer

from newsletter.cli.common import JsonOption, ProjectOption, app, get_project, plain, print_json, user_errors

bounces_app = typer.Typer(help="Bounces and complaints reported after the send.", no_args_is_help=True,
                          rich_markup_mode="rich")
app.add_typer(bounces_app, name="bounces")

KindChoice = Enum("KindChoice", {k: k for k in ("hard", "soft", "complaint", "auto_reply", "delayed",
                                                "unrecognised")}, type=str)  # type: ignore[misc]


@bounces_app.command("fetch")
def bounces_fetch(
    mailbox: Annotated[str | None, typer.Option(
        "--mailbox", help="imaps://user@host/INBOX, pop3s://user@host, or a Maildir/mbox path "
                          "(default: [bounces] mailbox; password: NEWSLETTER_BOUNCES__PASSWORD).",
        show_default=False)] = None,
    project: ProjectOption = None,
    json_output: JsonOption = False,
) -> None:
    """Read the bounce mailbox: hard bounces make the member `bounced`, soft bounces are counted,
    complaints (ARF) make them `complained` everywhere; auto-replies are ignored. Processed mail
    is moved out of the way (IMAP folder `Processed`, Maildir `.Processed`); what cannot be read
    stays and is listed. Running it again never counts a message twice.

    Example: [bold]newsletter bounces fetch[/bold]
    """
    from newsletter.feedback.intake import MessageResult, fetch_reports

    def show(message: MessageResult) -> None:
        if json_output:
            return
        outcomes = ", ".join(
            f"{t.outcome}{' (already taken in)' if t.duplicate else ''}" for t in message.taken)
        plain(f"{message.report.verdict}: {message.report.detail}"
              + (f" → {outcomes}" if outcomes else "") + (" → kept in the mailbox" if message.kept else ""))

    proj = get_project(project)
    with user_errors():
        result = fetch_reports(proj, proj.store, mailbox=mailbox, on_message=show)
    counts = result.outcomes
    if json_output:
        print_json({"mailbox": result.mailbox, "messages": len(result.messages), "outcomes": dict(counts),
                    "problems": result.problems,
                    "reports": [{"verdict": m.report.verdict, "detail": m.report.detail, "kept": m.kept,
                                 "outcomes": [t.outcome for t in m.taken]} for m in result.messages]})
        return
    for problem in result.problems:
        plain(problem, err=True)
    parts = [f"{n} {outcome}" for outcome, n in sorted(counts.items())]
    plain(f"{result.mailbox}: {len(result.messages)} messages" + (f": {', '.join(parts)}" if parts else ""))


@bounces_app.command("ls")
def bounces_ls(
    send: Annotated[int | None, typer.Option("--send", help="Only this send (see `sends ls`).",
                                             show_default=False)] = None,
    kind: Annotated[KindChoice | None, typer.Option("--kind", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 200,
    project: ProjectOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the bounces, complaints and ignored reports taken in, newest first.

    Example: [bold]newsletter bounces ls --send 3 --kind hard[/bold]
    """
    from newsletter.feedback.ledger import recent_events

    proj = get_project(project)
    with user_errors():
        rows = recent_events(proj.store, send_id=send, kind=kind.value if kind else None, limit=limit)
    if json_output:
        print_json([row.as_dict() for row in rows])
        return
    if not rows:
        plain("no bounces or complaints taken in" + (f" for send #{send}" if send else ""))
    for row in rows:
        when = row.received_at.strftime("%Y-%m-%d %H:%M")
        where = f"send #{row.send_id}" if row.send_id else "no send"
        plain(f"{when}  {row.kind:<10} {row.outcome:<9} {where:<10} {row.recipient or '-'}  "
              f"{row.status or ''} {row.diagnostic or ''}".rstrip())


