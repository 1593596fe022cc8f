"""The error policy: what an SMTP reply to one message means (docs/delivery.md, "Replies").

* 4xx — retried with exponential backoff and jitter (`delivery.retry_delay`, doubling) up to
  `delivery.retries` times in this run, then `failed_temporary` (the next resume tries again).
  421 and dropped connections also make the connection reconnect; a connection lost after the
  whole message was written flags the row `possibly_duplicated` (the server may have it).
* 5xx at MAIL FROM, or 5.1.7 / 5.1.8 anywhere — the *sender* address is refused: the send pauses
  at once, the message goes back to `pending`, nobody is marked.
* 5.1.x at RCPT or DATA (one recipient per message) — the mailbox is unknown: `failed_permanent`,
  and the membership becomes `bounced`.
* 5.2.x (mailbox full / disabled) — `failed_permanent` for this message, subscriber untouched.
* 5.7.x and other 5xx — the sender's problem (policy, reputation, content): `failed_temporary`
  with the reply, so the next resume tries again; the subscriber is untouched. After
  `delivery.max_policy_failures` of them in a row the send pauses and says why.
* no connection / TLS / login — the send stops at once; the message in hand goes back to
  `pending`, nothing is lost.
* a message that cannot be built for one recipient (e.g. a non-ASCII local part stored
  before addresses were checked) — `failed_permanent` with the reason; the send goes on.

`classify` decides the reply's kind; the send loop (`send_loop.SendRun.judge`) acts on it.
"""

from __future__ import annotations

import random

from newsletter.delivery.transport import Reply

MAX_BACKOFF = 300.0


def classify(reply: Reply) -> str:
    """sent | retry | sender | bounce | policy | permanent."""
    if reply.ok:
        return "sent"
    if reply.temporary:
        return "retry"
    enhanced = reply.enhanced
    # MAIL FROM refused, or RFC 3463's "bad sender's address" (5.1.7, 5.1.8): the sender's problem.
    if reply.stage == "mail" or enhanced in ("5.1.7", "5.1.8"):
        return "sender"
    if enhanced.startswith("5.1.") or (
            not enhanced and reply.stage == "rcpt" and reply.code in (550, 551, 553)):
        return "bounce"
    if enhanced.startswith("5.2."):  # mailbox full / disabled: not the sender's fault, not a bounce
        return "permanent"
    return "policy"


def retry_delay(base: float, attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: `base` doubling per attempt, capped at MAX_BACKOFF,
    times a random 0.5–1.5 so the retries of many messages spread out."""
    return min(base * 2 ** (attempts - 1), MAX_BACKOFF) * random.uniform(0.5, 1.5)
