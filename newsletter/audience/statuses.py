"""Membership statuses, consent sources, and the rules for moving between statuses — in one
place, for the store (`add`, sign-up, confirm, unsubscribe) and the CSV import alike.

    (none) ──sign-up / add / import──▶ pending ──confirm──▶ subscribed
    pending, subscribed ──unsubscribe──▶ unsubscribed
    any ──bounce / complaint / import of an opt-out──▶ bounced | complained | unsubscribed
    unsubscribed, bounced ──sign-up, then confirm──▶ subscribed

Nobody who left is re-activated by an editor (`add`, import). Only the person may come back
from "unsubscribed" or "bounced" (a new address behind an old mailbox, a mailbox repaired), by
signing up again AND confirming: the sign-up alone changes no status (anybody can type anybody's
address; a stranger's sign-up must leave nothing an editor's import could turn into a
subscription), and the confirmation link must have been asked for after they left. Complained
is final (the address is suppressed).
See docs/data-model.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

Status = Literal["pending", "subscribed", "unsubscribed", "bounced", "complained"]
STATUSES: tuple[str, ...] = ("pending", "subscribed", "unsubscribed", "bounced", "complained")
# Statuses that mean "this person left or must not be mailed": never re-activated by an editor.
OPTED_OUT: frozenset[str] = frozenset({"unsubscribed", "bounced", "complained"})
# The statuses an unsubscribe changes (to "unsubscribed"); bounced and complained stay as they are.
LEAVABLE: frozenset[str] = frozenset({"pending", "subscribed"})
# What a sign-up through the web form leaves alone (no confirmation mail either).
SIGNUP_IGNORED: frozenset[str] = frozenset({"subscribed", "complained"})
# Who may come back through sign-up + confirmation (their status stays until they confirm).
RETURNABLE: frozenset[str] = frozenset({"unsubscribed", "bounced"})
# Who caused a consent-log entry.
SOURCES: frozenset[str] = frozenset(
    {"import", "web", "cli", "unsubscribe_page", "one_click", "bounce", "complaint", "confirm",
     "preferences"}  # preferences: the member on their preference page (`audience/preferences.py`)
)

# What an operation does to one membership:
#   join      — there is none yet: create it with the target status
#   change    — set the existing membership to the target status
#   unchanged — nothing to write
#   refused   — the person opted out; an editor cannot re-activate them
#   request   — (sign-up) a confirmation mail goes out, the status stays until it is confirmed
Change = Literal["join", "change", "unchanged", "refused", "request"]


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
    """What a sign-up through the web form does (a confirmation mail goes out unless
    "refused"): none → join as pending; pending → unchanged (the mail goes out again);
    unsubscribed, bounced → request (the status stays; `confirm_allowed` decides later);
    subscribed, complained → refused, silently."""
    if current is None:
        return "join"
    if current in SIGNUP_IGNORED:
        return "refused"
    return "unchanged" if current == "pending" else "request"


def confirm_allowed(current: str | None, left_at: datetime | None, requested_at: datetime | None) -> bool:
    """Whether a confirmation makes the membership `subscribed`: a pending one always; one that
    left (RETURNABLE, at `left_at`) only with a link asked for after that (`requested_at`, the
    confirmation token's time) — an old link from before the unsubscribe brings nobody back."""
    if current == "pending":
        return True
    if current in RETURNABLE and requested_at is not None and left_at is not None:
        # Token times are whole seconds (rounded down): a link asked for within the second of
        # leaving is refused rather than an older one accepted; asking again helps.
        return requested_at >= left_at
    return False
