"""`newsletter send --to ADDR`: the issue to a few addresses, subject "[TEST] …".

No journal, no list, no subscriber: the unsubscribe link is `{base_url}/u/test`
(`TEST_UNSUBSCRIBE_TOKEN`), a page of `newsletter serve` saying that this was a test send. No
delivery row either, so no VERP tag: the envelope sender is the plain bounce address, if any.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from newsletter.audience.addresses import ascii_email, normalize_email
from newsletter.delivery.envelope import plain_sender
from newsletter.delivery.message import Recipient, check_address
from newsletter.delivery.plan import prepare_issue
from newsletter.delivery.transport import Reply, transport_for
from newsletter.project import Project
from newsletter.tokens import TEST_UNSUBSCRIBE_TOKEN

TEST_PREFIX = "[TEST] "


def send_test(project: Project, issue_path: Path, addresses: Sequence[str]) -> list[tuple[str, Reply]]:
    """Send the issue to `addresses`, one connection, in order; the server's reply to each.

    Raises `DeliveryError` if the server cannot be reached or refuses the login."""
    for address in addresses:
        check_address(address, "--to", "command line")
    envelope = [ascii_email(normalize_email(address)) for address in addresses]
    prepared = prepare_issue(project, issue_path, subject_prefix=TEST_PREFIX).prepared
    transport = transport_for(project)
    sender = plain_sender(project, prepared.sender)

    async def deliver() -> list[tuple[str, Reply]]:
        await transport.check()
        connection = transport.connection()
        replies = []
        try:
            for address in envelope:
                raw = prepared.personalise(Recipient(address), TEST_UNSUBSCRIBE_TOKEN)
                reply = await connection.send(sender, address, raw, dot_safe=True)
                assert reply is not None  # only None when a `ready` claim says no
                replies.append((address, reply))
        finally:
            await connection.close()
        return replies

    return asyncio.run(deliver())
