"""The double opt-in mail: rendered from `templates/confirm/*`, sent after the sign-up page.

`render_confirmation` words it (the templates say the words); the message itself is built by
`newsletter.delivery.message.confirmation_message`, beside the issues' messages;
`send_confirmation` sends it and never raises (the reader already has their page).
"""

from __future__ import annotations

import logging
import re

from newsletter.project import Project
from newsletter.tokens import confirm_url
from newsletter.web.pages import Pages
from newsletter.web.security import one_line

log = logging.getLogger("newsletter.serve")

_EMAIL = re.compile(r"[^\s<>]+@[^\s<>]+")


def render_confirmation(pages: Pages, *, list_title: str, confirm_url: str,
                        confirm_days: int) -> tuple[str, str, str]:
    """(subject, text, HTML) of the confirmation mail.

    The name typed into the form stays out of the mail: confirmation mails must not carry
    a stranger's text (a known way to send spam through sign-up forms)."""
    values = {"list_title": list_title, "confirm_days": confirm_days, "confirm_url": confirm_url}
    subject = one_line(pages.render("confirm/subject.txt", **values), 200)
    return subject, pages.render("confirm/mail.txt", **values), pages.render("confirm/mail.html", **values)


def send_confirmation(project: Project, pages: Pages, email: str, list_title: str, token: str) -> None:
    """Render and send the confirmation mail for `token` to the normalised address `email`
    (runs as a background task after the sign-up page went out)."""
    # Imported here: the sending code is not needed until the first sign-up.
    from newsletter.delivery.message import confirmation_message
    from newsletter.delivery.transport import send_message_now

    s = project.settings
    try:
        subject, text, html = render_confirmation(
            pages, list_title=list_title, confirm_days=s.serve.confirm_days,
            confirm_url=confirm_url(s.newsletter.base_url, token))
        send_message_now(project, confirmation_message(project, email, subject, text, html))
    except Exception as exc:  # the reader already has their page; the log must not name them
        log.warning("confirmation mail not sent: %s: %s", type(exc).__name__, _EMAIL.sub("…", str(exc)))
