"""`newsletter send --list NAME --dry-run`: every member's message as an .eml file, nothing sent."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from newsletter.audience.segments import segment_member_ids
from newsletter.db.schema import utcnow
from newsletter.delivery.message import Recipient, failure_reason
from newsletter.delivery.plan import SendPlan
from newsletter.delivery.variants import EMPTY_REASON, Variants
from newsletter.errors import NewsletterError
from newsletter.tokens import Tokens


def dry_run(plan: SendPlan, directory: Path | None = None,
            skipped: list[str] | None = None) -> tuple[Path, int]:
    """Write the personalised message of every subscribed member (of the plan's segment) as an
    .eml file; send nothing.

    The default directory is `outbox/dry-run/<slug>/`: git-ignored and never served (unlike
    `dist/`, which `serve` publishes) — the files hold addresses and working unsubscribe links.
    The messages are not DKIM-signed. Each member gets the version for the topics they chose
    (docs/topics.md). Members the real send skips (paused, no section for their topics) or fails
    (the message cannot be built) are left out and, with `skipped`, listed there with the
    reason."""
    directory = directory or plan.project.outbox_dir / "dry-run" / plan.issue.rendered.slug
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NewsletterError(f"cannot create {directory}: {exc.strerror}") from None
    unsigned = dataclasses.replace(plan.issue, prepared=dataclasses.replace(plan.issue.prepared, dkim=None))
    variants = Variants(plan.project, unsigned, plan.mailing_list.name, plan.mailing_list.title,
                        plan.topics)
    tokens = Tokens.for_project(plan.project)
    list_id = plan.mailing_list.id
    count = 0
    now = utcnow()
    # With --segment: its members only, as the send's rows would be (`Journal.start`).
    in_segment = (segment_member_ids(plan.store, list_id, plan.segment, "subscribed")
                  if plan.segment is not None else None)
    for member in plan.store.members(list_id):
        if in_segment is not None and member.subscriber_id not in in_segment:
            continue
        recipient = Recipient(member.email, member.name, member.subscriber_id, list_id)
        try:
            if member.paused_until is not None and member.paused_until > now:
                raise NewsletterError(f"paused until {member.paused_until:%Y-%m-%d}")
            prepared = variants.prepared(member.topics if isinstance(member.topics, list) else None)
            if prepared is None:
                raise NewsletterError(EMPTY_REASON.removeprefix("not sent: "))
        except NewsletterError as exc:  # like the real send: skipped
            if skipped is not None:
                skipped.append(f"{member.email}: {exc.message}")
            continue
        try:
            raw = prepared.personalise(recipient, tokens.mint_unsubscribe(member.token_id, list_id),
                                       preferences=tokens.mint_preferences(member.token_id))
        except Exception as exc:  # like the real send: this recipient fails, the others go on
            if skipped is not None:
                skipped.append(f"{member.email}: the message cannot be built: {failure_reason(exc)}")
            continue
        name = re.sub(r"[^A-Za-z0-9@._+-]", "_", member.email)
        (directory / f"{member.subscriber_id:06d}-{name}.eml").write_bytes(raw)
        count += 1
    return directory, count

