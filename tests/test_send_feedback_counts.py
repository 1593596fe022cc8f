"""Bounces and complaints reported after a send: their counts in `sends ls` / `sends show`, and
the warning `newsletter send` gives when the last send went over the bulk-sender limits.

The feedback column is filled directly here, as the ledger (newsletter/feedback/ledger.py) does."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from test_send_support import issue_path, make_list
from typer.testing import CliRunner

from newsletter.audience.store import Store
from newsletter.cli import app
from newsletter.db.schema import utcnow
from newsletter.delivery.records import SendInfo
from newsletter.delivery.reputation import warning
from newsletter.delivery.tables import deliveries

pytestmark = pytest.mark.backends

runner = CliRunner()


def cli(project, *args, input=None):
    return runner.invoke(app, [*args, "--project", str(project.root)], input=input)


def send_to(project, list_name: str, *extra: str, input=None):
    return cli(project, "send", str(issue_path(project)), "--list", list_name, *extra, input=input)


def report(store: Store, send_id: int, kind: str, count: int) -> None:
    """Mark `count` more delivered messages of the send as reported `kind`."""
    with store.write() as conn:
        ids = conn.execute(
            sa.select(deliveries.c.subscriber_id)
            .where(deliveries.c.send_id == send_id, deliveries.c.feedback.is_(None))
            .order_by(deliveries.c.subscriber_id).limit(count)).scalars().all()
        assert len(ids) == count
        conn.execute(deliveries.update().where(
            deliveries.c.send_id == send_id, deliveries.c.subscriber_id.in_(ids),
        ).values(feedback=kind, feedback_at=utcnow()))


def other_list(store: Store, name: str, count: int) -> None:
    mailing_list = store.create_list(name)
    for i in range(count):
        store.add_subscriber(f"{name}{i}@example.org", mailing_list.id, confirmed=True)


def test_counts_in_sends_ls_and_show(project):
    store, _, _ = make_list(project, 10)
    assert send_to(project, "news", "--yes").exit_code == 0
    report(store, 1, "hard", 2)
    report(store, 1, "soft", 3)
    report(store, 1, "complaint", 1)

    (listed,) = json.loads(cli(project, "sends", "ls", "--json").stdout)
    assert listed["feedback"] == {"hard": 2, "soft": 3, "complaint": 1}
    table = cli(project, "sends", "ls").output
    header = next(line for line in table.splitlines() if "Hard" in line)
    assert "Soft" in header and "Compl" in header
    (row,) = [line for line in table.splitlines() if "2026-02" in line]
    assert [cell.strip() for cell in row.split("│")[10:13]] == ["2", "3", "1"]  # Hard, Soft, Compl.

    shown = json.loads(cli(project, "sends", "show", "1", "--json").stdout)
    assert shown["feedback"] == {"hard": 2, "soft": 3, "complaint": 1}
    assert sorted(d["feedback"] or "" for d in shown["deliveries"]) == (
        [""] * 4 + ["complaint", "hard", "hard", "soft", "soft", "soft"])
    human = cli(project, "sends", "show", "1").output
    assert ("Reported since: 2 hard bounce(s), 3 soft bounce(s), 1 complaint(s) (complaint rate "
            "10 %, hard-bounce rate 20 % of 10 sent)") in human
    assert "sent, hard bounce" in human and "sent, complaint" in human


def test_a_send_without_reports_counts_zero(project):
    make_list(project, 2)
    assert send_to(project, "news", "--yes").exit_code == 0
    (listed,) = json.loads(cli(project, "sends", "ls", "--json").stdout)
    assert listed["feedback"] == {"hard": 0, "soft": 0, "complaint": 0}
    assert "Reported since: 0 hard bounce(s), 0 soft bounce(s), 0 complaint(s)" in cli(
        project, "sends", "show", "1").output


def test_hard_bounce_rate_above_2_percent_warns_before_the_next_send(project):
    store, _, _ = make_list(project, 50)
    assert send_to(project, "news", "--yes").exit_code == 0
    report(store, 1, "hard", 2)  # 4 %
    report(store, 1, "soft", 5)  # soft bounces are no reason to warn
    other_list(store, "other", 2)

    asked = send_to(project, "other", input="n\n")  # the warning comes before the question
    assert asked.exit_code == 1
    (line,) = [x for x in asked.output.splitlines() if x.startswith("Warning:")]
    assert asked.output.index(line) < asked.output.index("Send now?")
    assert "the last send, #1 (2026-02 to news)" in line
    assert "a hard-bounce rate of 4 % (2 of 50 sent; keep it under 2 %)" in line
    assert "complaint rate" not in line
    assert "remove stale addresses" in line and "where the list's addresses come from" in line

    sent = send_to(project, "other", "--yes")  # also without the question
    assert sent.exit_code == 0
    assert "a hard-bounce rate of 4 %" in sent.output
    assert sent.output.index("Warning:") < sent.output.index("Send #2 finished")


def test_complaint_rate_above_0_1_percent_warns(project):
    store, _, _ = make_list(project, 20)
    assert send_to(project, "news", "--yes").exit_code == 0
    report(store, 1, "complaint", 1)  # 5 %
    other_list(store, "other", 1)
    result = send_to(project, "other", "--yes")
    assert result.exit_code == 0
    (line,) = [x for x in result.output.splitlines() if x.startswith("Warning:")]
    assert "#1 (2026-02 to news)" in line
    assert "a complaint rate of 5 % (1 of 20 sent; keep it under 0.1 %)" in line
    assert "hard-bounce rate" not in line


def test_no_warning_at_or_below_the_limits(project):
    store, _, _ = make_list(project, 50)
    assert send_to(project, "news", "--yes").exit_code == 0
    report(store, 1, "hard", 1)  # exactly 2 %: not above
    report(store, 1, "soft", 20)
    other_list(store, "other", 1)
    result = send_to(project, "other", "--yes")
    assert result.exit_code == 0 and "Warning" not in result.output


def test_only_the_most_recent_finished_send_counts(project):
    """Reputation is the sender's: a clean send to another list after a bad one ends the
    warning; a bad one to another list starts it, whichever list is sent to next."""
    store, _, _ = make_list(project, 20)
    other_list(store, "other", 3)
    other_list(store, "third", 1)
    assert send_to(project, "other", "--yes").exit_code == 0  # send #1
    report(store, 1, "complaint", 1)  # 33 %
    assert "Warning: the last send, #1" in send_to(project, "news", "--yes").output  # send #2
    result = send_to(project, "third", "--yes")
    assert result.exit_code == 0 and "Warning" not in result.output


def _info(sent: int, hard: int, complaint: int) -> SendInfo:
    now = utcnow()
    return SendInfo(7, "2026-03", 1, "news", "Subject", "finished", "Maildir", "x", now, now, now,
                    counts={"sent": sent}, feedback={"hard": hard, "soft": 0, "complaint": complaint})


@pytest.mark.parametrize(("hard", "complaint", "warned"), [
    (20, 1, None),  # 2 % and 0.1 % exactly: at the limits, not above
    (21, 1, "hard-bounce rate of 2.1 %"),
    (20, 2, "complaint rate of 0.2 %"),
    (0, 0, None),
])
def test_the_limits_are_strictly_above(hard, complaint, warned):
    text = warning(_info(1000, hard, complaint))
    assert (text is None) if warned is None else (warned in (text or ""))


def test_a_send_with_nothing_sent_warns_of_nothing():
    assert warning(_info(0, 0, 0)) is None and warning(None) is None
