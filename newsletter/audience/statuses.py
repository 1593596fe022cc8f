"""Membership statuses, consent sources, and the rules for moving between statuses — in one
place, for the store (`add`, sign-up, confirm, unsubscribe) and the CSV import alike.

    (none) ──sign-up / add / import──▶ pending ──confirm──▶ subscribed
    pending, subscribed ──unsubscribe──▶ unsubscribed
    any ──bounce / complaint / import of an opt-out──▶ bounced | complained | unsubscribed

Nobody who left is re-activated by an editor (`add`, import). Only the person may come back
from "unsubscribed", by signing up again (double opt-in). Bounced and complained are final.
See docs/data-model.md.
"""

from __future__ import annotations

from typing import Literal

Status = Literal["pending", "subscribed", "unsubscribed", "bounced", "complained"]
STATUSES: tuple[str, ...] = ("pending", "subscribed", "unsubscribed", "bounced", "complained")
# Statuses that mean "this person left or must not be mailed": never re-activated by an editor.
OPTED_OUT: frozenset[str] = frozenset({"unsubscribed", "bounced", "complained"})
# The statuses an unsubscribe changes (to "unsubscribed"); bounced and complained stay as they are.
LEAVABLE: frozenset[str] = frozenset({"pending", "subscribed"})
# What a sign-up through the web form leaves alone (no confirmation mail either).
SIGNUP_IGNORED: frozenset[str] = frozenset({"subscribed", "bounced", "complained"})
# Who caused a consent-log entry.
SOURCES: frozenset[str] = frozenset(
    {"import", "web", "cli", "unsubscribe_page", "one_click", "bounce", "complaint", "confirm"}
)

# What an operation does to one membership:
#   join      — there is none yet: create it with the target status
#   change    — set the existing membership to the target status
#   unchanged — nothing to write
#   refused   — the person opted out; an editor cannot re-activate them
Change = Literal["join", "change", "unchanged", "refused"]


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown membership status {status!r}; one of {', '.join(STATUSES)}")


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown consent source {source!r}; one of {', '.join(sorted(SOURCES))}")


def editor_target(file_status: str | None, confirmed: bool) -> str:
    """The status an editor's `add` or CSV import asks for: an opt-out status from the file is
    carried over; otherwise "subscribed" when the editor confirms prior consent (unless the file
    says "pending"), else "pending" (double opt-in still to come)."""
    if file_status in OPTED_OUT:
        return file_status
    return "subscribed" if confirmed and file_status != "pending" else "pending"


def editor_change(current: str | None, target: str) -> Change:
    """What an editor's `add` or import does to a membership now `current` (None: none) that
    should be `target` (from `editor_target`).

    An opted-out member stays as they are ("unchanged" if the file opts them out too,
    "refused" otherwise); pending → subscribed and any → an opt-out from the file are changes;
    subscribed or pending asked to be pending is nothing.
    """
    if current is None:
        return "join"
    if current in OPTED_OUT:
        return "unchanged" if target in OPTED_OUT else "refused"
    if target in OPTED_OUT or (current == "pending" and target == "subscribed"):
        return "change"
    return "unchanged"


def signup_change(current: str | None) -> Change:
    """What a sign-up through the web form does (the target is always "pending", and a
    confirmation mail goes out unless "refused"): none → join; unsubscribed → change (people
    may come back themselves); pending → unchanged (the mail goes out again); subscribed,
    bounced, complained → refused, silently."""
    if current is None:
        return "join"
    if current in SIGNUP_IGNORED:
        return "refused"
    return "unchanged" if current == "pending" else "change"
