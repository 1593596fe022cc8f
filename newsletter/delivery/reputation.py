"""The sender's reputation before a send: the last send's complaint and hard-bounce rates.

Mailbox providers judge the sender (domain and IP), not the list: Gmail and Yahoo ask bulk
senders to keep spam complaints under 0.1 % of the messages delivered and start refusing their
mail well before 0.3 %; a hard-bounce rate above 2 % marks a list as old or bought. So before a
send the most recent finished send of the project, whatever its list, is looked at
(`JournalReader.last_finished`), with the counts the feedback ledger recorded on its rows.
"""

from __future__ import annotations

from newsletter.delivery.records import SendInfo

COMPLAINT_LIMIT = 0.001  # 0.1 % of the messages sent
HARD_BOUNCE_LIMIT = 0.02  # 2 %


def rates(info: SendInfo) -> tuple[float, float]:
    """(complaint rate, hard-bounce rate) of a send, as fractions of its messages sent."""
    sent = info.counts.get("sent", 0)
    if not sent:
        return 0.0, 0.0
    return info.feedback.get("complaint", 0) / sent, info.feedback.get("hard", 0) / sent


def warning(last: SendInfo | None) -> str | None:
    """One line for the editor when `last` (the project's last finished send) went over a limit,
    else None."""
    if last is None:
        return None
    complaint_rate, hard_rate = rates(last)
    over = []
    if complaint_rate > COMPLAINT_LIMIT:
        over.append(f"a complaint rate of {percent(complaint_rate)} ({last.feedback['complaint']} "
                    f"of {last.counts['sent']} sent; keep it under {percent(COMPLAINT_LIMIT)})")
    if hard_rate > HARD_BOUNCE_LIMIT:
        over.append(f"a hard-bounce rate of {percent(hard_rate)} ({last.feedback['hard']} of "
                    f"{last.counts['sent']} sent; keep it under {percent(HARD_BOUNCE_LIMIT)})")
    if not over:
        return None
    return (f"Warning: the last send, #{last.id} ({last.issue_slug} to {last.list_name}), had "
            + " and ".join(over) + ". Above these rates Gmail, Yahoo and other mailbox providers "
            "start to refuse or junk all mail from this sender. Check where the list's addresses "
            "come from (only people who asked for it, confirmed by double opt-in) and remove stale "
            f"addresses before sending; `newsletter sends show {last.id}` lists its deliveries.")


def percent(fraction: float) -> str:
    """0.0125 → `1.25 %`; small rates keep their significant digits (0.00125 → `0.125 %`)."""
    return f"{fraction * 100:.3g} %"
