"""CLI commands: `approve` (who approved which content of an issue) and `status` (where an issue
stands: draft → approved → scheduled → sending → sent). The logic: `delivery/approval.py`,
`delivery/issue_status.py`."""

from typing import TYPE_CHECKING, Annotated

import typer

from newsletter.cli.common import (
    IssueFile,
    JsonOption,
    ProjectOption,
    app,
    get_project,
    plain,
    print_json,
    relative,
    user_errors,
)

if TYPE_CHECKING:
    from datetime import datetime

    from newsletter.delivery.records import SendInfo


@app.command()
def approve(
    file: IssueFile,
    by: Annotated[str, typer.Option("--by", help="Who approves (recorded with the approval).",
                                    show_default=False)],
    json: JsonOption = False,
    project: ProjectOption = None,
) -> None:
    """Approve an issue as it is now: records who approved which exact content (the issue
    file, the templates, the settings that shape the mail, the rendered message). With
    \\[delivery] require_approval = true only an approved issue goes to a list, and any change
    after the approval needs a new one.

    Example: [bold]newsletter approve issues/2026-03.yaml --by "Anna Schmidt"[/bold]
    """
    from newsletter.delivery.approval import approve_file

    proj = get_project(project, near=file)
    with user_errors(), proj:
        approval = approve_file(proj, file, by)
    if json:
        print_json(approval.as_dict())
        return
    zone = proj.settings.newsletter.timezone
    plain(f"Approved {approval.issue_slug} ({relative(file)}) by {approval.by} at "
          f"{_local(approval.at, zone)} (approval #{approval.id}).")
    if not proj.settings.delivery.require_approval:
        plain("Note: newsletter.toml does not require approval ([delivery] require_approval); "
              "the approval is recorded all the same.")


@app.command()
def status(file: IssueFile, json: JsonOption = False, project: ProjectOption = None) -> None:
    """Where an issue stands: draft (not approved, or changed since), approved (by whom, when),
    scheduled (for when), sending (counts so far), sent (counts per list and segment).

    Example: [bold]newsletter status issues/2026-03.yaml[/bold]
    """
    from newsletter.delivery.issue_status import issue_status

    proj = get_project(project, near=file)
    with user_errors(), proj:
        found = issue_status(proj, file)
    if json:
        print_json(found.as_dict())
        return
    zone = proj.settings.newsletter.timezone
    plain(f"{found.slug} ({relative(found.path)}): {found.subject}")
    verdict = found.approval
    a = verdict.approval
    if a is None:
        required = " (required before a send)" if proj.settings.delivery.require_approval else ""
        plain(f"Approval:  none yet{required}; `newsletter approve {relative(found.path)} --by NAME`")
    elif verdict.state == "approved":
        plain(f"Approval:  approved by {a.by} at {_local(a.at, zone)}")
    else:
        plain(f"Approval:  changed since {a.by} approved it at {_local(a.at, zone)}: "
              + "; ".join(verdict.changes))
    for info in found.sends:
        plain(f"Send #{info.id} to {info.audience}: {_send_line(info, zone)}")
    plain(f"State:     {found.state}")


def _local(moment: "datetime", zone: str) -> str:
    from newsletter.delivery.schedule import local_time

    return local_time(moment, zone)


def _send_line(info: "SendInfo", zone: str) -> str:
    c = info.counts
    counts = (f"{c['sent']} of {c['total']} sent, {c['failed_permanent'] + c['failed_temporary']} "
              f"failed, {c['skipped']} skipped")
    if info.status == "scheduled":
        assert info.scheduled_at is not None
        return f"scheduled for {_local(info.scheduled_at, zone)}"
    if info.status == "running":
        since = info.workers[0].started_at if info.workers else info.updated_at
        return f"sending since {_local(since, zone)}: {counts}, {c['pending']} pending"
    if info.status == "finished":
        when = _local(info.finished_at, zone) if info.finished_at else "?"
        return f"sent {when}: {counts}"
    reason = f" ({info.reason})" if info.reason else ""
    if info.status == "cancelled":
        return f"cancelled{reason}"
    return f"{info.status}{reason}: {counts}, {c['pending'] + c['failed_temporary']} to (re)try"
