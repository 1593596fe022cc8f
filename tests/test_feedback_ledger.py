"""Taking in bounces and complaints after a real send (into the Maildir outbox), on SQLite and
PostgreSQL: matching by VERP tag, Message-ID and address, the policy, the consent log, the
journal row, idempotence, and `newsletter bounces fetch` / `bounces ls` on a real Maildir."""

from __future__ import annotations

import json
import mailbox
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from imap_tools import MailBox
from imapserver import ImapServerUnavailable, start_server

from newsletter.audience.tables import memberships, new_token_id, subscribers
from newsletter.delivery.tables import deliveries, sends
from newsletter.delivery.verp import mint_tag, read_tag
from newsletter.feedback.intake import fetch_reports, ledger_for
from newsletter.feedback.ledger import Event
from newsletter.feedback.reports import Feedback, read_report
from newsletter.project import Project, open_project
from newsletter.tokens import signing_keys

pytestmark = pytest.mark.backends

ISSUE = "issues/2026-02.yaml"
PEOPLE = [f"leser{i}@example.org" for i in range(6)]


@pytest.fixture
def sent(project_dir: Path) -> Project:
    """A project whose list `news` (six members) got issue 2026-02 into outbox/."""
    (project_dir / "subscribers" / "people.csv").write_text(
        "email\n" + "\n".join(PEOPLE) + "\n", encoding="utf-8")
    project = open_project(project_dir)
    project.import_subscribers(project_dir / "subscribers" / "people.csv", "news", confirmed=True,
                               create_list=True)
    report = project.send(project_dir / ISSUE, "news")
    assert report.sent == len(PEOPLE)
    return project


def _delivery(project: Project, email: str) -> sa.Row:
    with project.store.read() as conn:
        return conn.execute(sa.select(deliveries).where(deliveries.c.email == email)).one()


def _status(project: Project, email: str) -> str | None:
    subscriber = project.store.find_subscriber(email)
    assert subscriber is not None
    return project.store.membership_status(subscriber.id, project.store.get_list("news").id)


def test_a_hard_bounce_found_by_its_tag_bounces_the_member_and_says_why(sent: Project) -> None:
    row = _delivery(sent, "leser1@example.org")
    tag = mint_tag(signing_keys(sent), row.send_id, row.subscriber_id)
    reported = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
    taken = ledger_for(sent, sent.store).take(Event(
        event_key="t1", source="mailbox", kind="hard", recipient="someone-else@relay.example",
        status="5.1.1", diagnostic="550 5.1.1 <leser1@example.org>: user unknown", tag=tag,
        reported_at=reported))
    assert (taken.outcome, taken.lists, taken.send_id) == ("bounced", ("news",), row.send_id)
    assert _status(sent, "leser1@example.org") == "bounced"
    entry = sent.store.history(row.subscriber_id)[-1]
    assert (entry.action, entry.source, entry.list_name) == ("bounced", "bounce", "news")
    assert "5.1.1" in entry.detail and "2026-11-30 09:15 UTC" in entry.detail
    assert _delivery(sent, "leser1@example.org").feedback == "hard"
    assert _status(sent, "leser2@example.org") == "subscribed"  # nobody else


def test_a_forged_tag_falls_back_to_the_message_id_and_then_the_address(sent: Project) -> None:
    ledger = ledger_for(sent, sent.store)
    row = _delivery(sent, "leser2@example.org")
    forged = mint_tag(["somebody-elses-key"], row.send_id, row.subscriber_id)
    by_id = ledger.take(Event(event_key="m", source="mailbox", kind="hard", tag=forged,
                              message_id=row.message_id, status="5.1.1"))
    assert (by_id.outcome, by_id.subscriber_id) == ("bounced", row.subscriber_id)
    by_address = ledger.take(Event(event_key="a", source="mailbox", kind="hard",
                                   recipient="LESER3@example.org", status="5.1.1"))
    assert by_address.outcome == "bounced" and _status(sent, "leser3@example.org") == "bounced"
    stranger = ledger.take(Event(event_key="s", source="mailbox", kind="hard",
                                 recipient="nobody@example.org", status="5.1.1"))
    assert stranger.outcome == "unmatched"


def test_taking_the_same_event_twice_changes_nothing_the_second_time(sent: Project) -> None:
    ledger = ledger_for(sent, sent.store)
    event = Event(event_key="ses:abc:0", source="ses", kind="soft", recipient="leser4@example.org",
                  status="4.2.2")
    first, second = ledger.take(event), ledger.take(event)
    assert (first.outcome, first.duplicate) == ("counted", False)
    assert (second.outcome, second.duplicate) == ("counted", True)
    with sent.store.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feedback_events")).scalar() == 1


def test_soft_bounces_count_across_distinct_sends_before_they_bounce(sent: Project) -> None:
    """Defaults: 3 soft bounces across at least 2 sends within 30 days."""
    ledger = ledger_for(sent, sent.store)
    row = _delivery(sent, "leser5@example.org")
    tag = mint_tag(signing_keys(sent), row.send_id, row.subscriber_id)
    for n in range(3):  # three from the same send: still one send
        taken = ledger.take(Event(event_key=f"s{n}", source="mailbox", kind="soft", tag=tag,
                                  status="4.2.2"))
        assert taken.outcome == "counted"
    assert _status(sent, "leser5@example.org") == "subscribed"
    # A second send of another issue reaches them and soft-bounces too: now it is enough.
    second = sent.root / "issues" / "2026-03.yaml"
    second.write_text((sent.root / ISSUE).read_text(encoding="utf-8").replace(
        "2026-02", "2026-03"), encoding="utf-8")
    sent.send(second, "news")
    with sent.store.read() as conn:
        later = conn.execute(sa.select(deliveries).where(
            deliveries.c.email == "leser5@example.org", deliveries.c.send_id != row.send_id)).one()
    taken = ledger.take(Event(event_key="s3", source="mailbox", kind="soft", status="4.2.2",
                              tag=mint_tag(signing_keys(sent), later.send_id, later.subscriber_id)))
    assert taken.outcome == "bounced" and _status(sent, "leser5@example.org") == "bounced"


def test_a_complaint_leaves_every_list_and_suppresses_the_address(sent: Project) -> None:
    store = sent.store
    other = store.create_list("events")
    subscriber = store.find_subscriber("leser0@example.org")
    assert subscriber is not None
    store.add_subscriber("leser0@example.org", other.id, confirmed=True)
    taken = ledger_for(sent, store).take(Event(event_key="arf", source="mailbox", kind="complaint",
                                               message_id=_delivery(sent, "leser0@example.org").message_id))
    assert (taken.outcome, set(taken.lists)) == ("complained", {"news", "events"})
    assert {m.status for m in store.memberships(subscriber.id)} == {"complained"}
    assert store.is_suppressed("leser0@example.org")
    assert _delivery(sent, "leser0@example.org").feedback == "complaint"


def test_who_unsubscribed_stays_unsubscribed_after_a_late_bounce(sent: Project) -> None:
    store = sent.store
    store.unsubscribe("leser2@example.org")
    taken = ledger_for(sent, store).take(Event(event_key="late", source="mailbox", kind="hard",
                                               recipient="leser2@example.org", status="5.1.1"))
    assert taken.outcome == "unchanged" and _status(sent, "leser2@example.org") == "unsubscribed"


# --- `newsletter bounces fetch` / `bounces ls` on a real Maildir ---------------------------------


def _dsn(recipient: str, original_message_id: str, status: str, reported: datetime) -> bytes:
    """A DSN as RFC 3464 describes it: a notice, message/delivery-status, the original headers."""
    return f"""From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: newsletter@example.org
Subject: Undelivered Mail Returned to Sender
Date: {format_datetime(reported)}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain; charset=us-ascii

<{recipient}>: host mx.example.net said: 550 {status} no such user

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: failed
Status: {status}
Diagnostic-Code: smtp; 550 {status} no such user

--b1
Content-Type: text/rfc822-headers

Message-ID: {original_message_id}
To: {recipient}
Subject: Smart zu wissen

--b1--
""".replace("\n", "\r\n").encode("ascii")


def _newsletter(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "newsletter", *args, "--project", str(project.root)],
                          capture_output=True, text=True, check=False, timeout=120)


def test_bounces_fetch_takes_a_maildir_in_once_and_keeps_what_it_cannot_read(sent: Project,
                                                                            tmp_path: Path) -> None:
    inbox = mailbox.Maildir(tmp_path / "bounces", create=True)
    now = datetime.now(UTC) - timedelta(minutes=5)
    for email, status in [("leser1@example.org", "5.1.1"), ("leser4@example.org", "4.2.2")]:
        inbox.add(_dsn(email, _delivery(sent, email).message_id, status, now))
    inbox.add(b"From: reader@example.org\nTo: newsletter@example.org\nSubject: Re: Smart zu wissen\n\n"
              b"Danke, sehr interessant!\n")
    ooo = EmailMessage()
    ooo["From"], ooo["To"] = "leser5@example.org", "newsletter@example.org"
    ooo["Subject"] = "Abwesenheitsnotiz"
    ooo["Auto-Submitted"] = "auto-replied"
    ooo.set_content("Ich bin bis zum 3. Dezember nicht im Büro.")
    inbox.add(bytes(ooo))

    done = _newsletter(sent, "bounces", "fetch", "--mailbox", str(tmp_path / "bounces"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert _status(sent, "leser1@example.org") == "bounced"
    assert _status(sent, "leser4@example.org") == "subscribed"  # one soft bounce is counted only
    summary = done.stdout.strip().splitlines()[-1]
    assert "4 messages" in summary and "1 bounced" in summary and "1 counted" in summary
    assert "1 ignored" in summary and "1 kept" in summary
    # The reply stays in the mailbox for a person; the rest moved to .Processed.
    inbox = mailbox.Maildir(tmp_path / "bounces", create=False)
    assert [m["Subject"] for m in inbox] == ["Re: Smart zu wissen"]

    again = _newsletter(sent, "bounces", "fetch", "--mailbox", str(tmp_path / "bounces"))
    assert again.returncode == 0 and "1 messages" in again.stdout.splitlines()[-1]
    listed = json.loads(_newsletter(sent, "bounces", "ls", "--json").stdout)
    assert sorted((e["kind"], e["outcome"]) for e in listed) == [
        ("auto_reply", "ignored"), ("hard", "bounced"), ("soft", "counted")]
    send_id = _delivery(sent, "leser1@example.org").send_id
    shown = _newsletter(sent, "bounces", "ls", "--send", str(send_id))
    assert "leser1@example.org" in shown.stdout and "5.1.1" in shown.stdout


def test_bounces_fetch_without_a_mailbox_says_what_to_set(project_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "newsletter", "bounces", "fetch", "--project",
                           str(project_dir)], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 1
    assert "[bounces] mailbox" in done.stderr and "Traceback" not in done.stderr


def test_bounces_fetch_over_imaps_with_the_configured_mailbox(sent: Project,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The configured mailbox on a real IMAPS server (Dovecot, self-signed certificate trusted
    through [bounces] ca_file, password from the environment)."""
    try:
        server = start_server()
    except ImapServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        with MailBox("127.0.0.1", server.imaps_port, ssl_context=context).login(
                server.user, server.password) as box:
            row = _delivery(sent, "leser2@example.org")
            box.append(_dsn("leser2@example.org", row.message_id, "5.1.1", datetime.now(UTC)), "INBOX")
        monkeypatch.setenv("NEWSLETTER_BOUNCES__MAILBOX", server.imaps_url())
        monkeypatch.setenv("NEWSLETTER_BOUNCES__CA_FILE", str(server.ca_file))
        monkeypatch.setenv("NEWSLETTER_BOUNCES__PASSWORD", "not-the-Passw0rd")
        refused = _newsletter(sent, "bounces", "fetch")
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert "not-the-Passw0rd" not in refused.stderr and "Traceback" not in refused.stderr
        assert "wrong user name or password" in refused.stderr
        monkeypatch.setenv("NEWSLETTER_BOUNCES__PASSWORD", server.password)
        done = _newsletter(sent, "bounces", "fetch")
        assert done.returncode == 0, done.stderr
        assert "1 bounced" in done.stdout.splitlines()[-1]
        assert _status(sent, "leser2@example.org") == "bounced"
        with MailBox("127.0.0.1", server.imaps_port, ssl_context=context).login(
                server.user, server.password) as box:
            assert box.folder.status("INBOX")["MESSAGES"] == 0
            box.folder.set("Processed")
            assert len(box.uids("ALL")) == 1
    finally:
        server.stop()


# --- every report of the corpus, taken in: the status change and the consent-log entry ----------

CORPUS = Path(__file__).parent / "feedback_corpus"
CORPUS_KEY = "feedback-test-key"  # the key the corpus's VERP tags were minted with
COUNTED = sorted(p.name for p in CORPUS.glob("*.eml")
                 if read_report(p.read_bytes(), "bounces").verdict in ("bounce", "complaint")
                 or read_report(p.read_bytes(), "root").verdict in ("bounce", "complaint"))


def _member_for(project: Project, finding: Feedback, list_id: int, n: int) -> int:
    """The subscriber a report's finding names: by its tag (with the send and the delivery row the
    tag points at), else by its address."""
    now = datetime.now(UTC)
    pair = read_tag([CORPUS_KEY], finding.tag) if finding.tag else None
    if pair is not None and project.store.subscriber(pair[1]) is not None:
        return pair[1]  # one message to two recipients, one tag (we never send such): the same member
    email = finding.recipient or f"redacted{n}@example.org"
    with project.store.write() as conn:
        values = {"email": email, "email_key": email.lower(), "token_id": new_token_id(), "created_at": now,
                  "attributes": {}}
        if pair is not None:
            values["id"] = pair[1]
        subscriber_id = conn.execute(subscribers.insert().values(**values)
                                     .returning(subscribers.c.id)).scalar_one()
        conn.execute(memberships.insert().values(subscriber_id=subscriber_id, list_id=list_id,
                                                 status="subscribed", created_at=now, updated_at=now))
        if pair is not None:
            conn.execute(sends.insert().values(id=pair[0], issue_slug=f"s{pair[0]}", list_id=list_id,
                                               content_hash="x", subject="S", status="finished",
                                               transport="smtp"))
            conn.execute(deliveries.insert().values(send_id=pair[0], subscriber_id=subscriber_id,
                                                    email=email, status="sent",
                                                    message_id=finding.message_id))
    return int(subscriber_id)


@pytest.mark.parametrize("name", COUNTED)
def test_each_corpus_report_changes_the_member_and_logs_why(project_dir: Path, tmp_path: Path, name: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (CORPUS / name).read_bytes()
    local = "root" if name.startswith("postfix") else "bounces"  # Postfix's were sent as root+TAG
    monkeypatch.setenv("NEWSLETTER_SECRET__TOKEN", CORPUS_KEY)
    if local == "root":
        monkeypatch.setenv("NEWSLETTER_BOUNCES__ADDRESS", "root@localhost")
    project = open_project(project_dir)
    news = project.store.create_list("news")
    report = read_report(raw, local)
    members = [_member_for(project, finding, news.id, n) for n, finding in enumerate(report.findings)]
    inbox = mailbox.Maildir(tmp_path / "in", create=True)
    inbox.add(raw)

    result = fetch_reports(project, project.store, mailbox=str(tmp_path / "in"))
    taken = result.messages[0].taken
    seen: set[int] = set()
    for finding, member, outcome in zip(report.findings, members, taken, strict=True):
        status = project.store.membership_status(member, news.id)
        history = project.store.history(member)
        if finding.kind == "soft":
            assert (outcome.outcome, status, history) == ("counted", "subscribed", [])
        else:
            expected = "complained" if finding.kind == "complaint" else "bounced"
            assert status == expected, name
            assert outcome.outcome == ("unchanged" if member in seen else expected), name
            seen.add(member)
            last = history[-1]
            source = "bounce" if expected == "bounced" else "complaint"
            assert (last.action, last.source) == (expected, source)
            assert last.detail and (finding.status or "complaint") in last.detail
