"""read_report on every message of tests/feedback_corpus/ (real Postfix DSNs and messages
written after each format's published structure, see its README), garbage, forged tags, and the
hard/soft policy."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.delivery.verp import read_tag
from newsletter.feedback import reports
from newsletter.feedback.reports import classify, read_report

CORPUS = Path(__file__).parent / "feedback_corpus"
KEYS = ["feedback-test-key"]  # the key the corpus tags were minted with

# file: (bounce_local, verdict, [(kind, recipient, status)], (send_id, subscriber_id) or None, message_id)
EXPECTED = {
    "postfix-5.1.1-unknown-user.eml": (
        "root", "bounce", [("hard", "niemand@localhost", "5.1.1")], (42, 1001),
        "<2026-03.42.1001@newsletter.localhost>"),
    "postfix-5.1.1-two-recipients.eml": (
        "root", "bounce", [("hard", "keiner@localhost", "5.1.1"), ("hard", "niemand@localhost", "5.1.1")],
        (43, 1003), "<2026-04.43.1003@newsletter.localhost>"),
    "postfix-5.2.2-mailbox-full.eml": (
        "root", "bounce", [("soft", "nobody@localhost", "5.2.2")], (42, 1002),
        "<2026-03.42.1002@newsletter.localhost>"),
    "exim-5.1.1-unknown-user.eml": (
        "bounces", "bounce", [("hard", "kaemmerei@stadt-beispiel.example", "5.1.1")], (44, 2001),
        "<2026-03.44.2001@newsletter.example.org>"),
    "exchange-o365-5.1.10-recipient-not-found.eml": (
        "bounces", "bounce", [("hard", "buergerbuero@landkreis-beispiel.example", "5.1.10")], (44, 2002),
        "<2026-03.44.2002@newsletter.example.org>"),
    "gmail-5.1.1-address-not-found.eml": (
        "bounces", "bounce", [("hard", "claudia.beispiel@mail.example.com", "5.1.1")], (44, 2003),
        "<2026-03.44.2003@newsletter.example.org>"),
    "gmx-dsn-de-5.0.0-unbekannt.eml": (
        "bounces", "bounce", [("hard", "Dieter.Muster@mail-de.example", "5.0.0")], (44, 2004),
        "<2026-03.44.2004@newsletter.example.org>"),
    "qmail-5.1.1-does-not-like-recipient.eml": (
        "bounces", "bounce", [("hard", "kassenwart@verein-beispiel.example", "5.1.1")], (44, 2005),
        "<2026-03.44.2005@newsletter.example.org>"),
    "arf-gmx-abuse.eml": (
        "bounces", "complaint", [("complaint", "emma.probe@mail-de.example", None)], (44, 2006),
        "<2026-03.44.2006@newsletter.example.org>"),
    "arf-yahoo-redacted.eml": (
        "bounces", "complaint", [("complaint", None, None)], (44, 2007),
        "<2026-03.44.2007@newsletter.example.org>"),
    "dsn-delayed-4.4.1.eml": ("bounces", "delayed", [], None, None),
    "ooo-de-abwesenheitsnotiz.eml": ("bounces", "auto_reply", [], None, None),
    "ooo-en-exchange-automatic-reply.eml": ("bounces", "auto_reply", [], None, None),
    "ooo-de-x-autoreply.eml": ("bounces", "auto_reply", [], None, None),
    "challenge-response.eml": ("bounces", "auto_reply", [], None, None),
    "human-reply.eml": ("bounces", "unrecognised", [], None, None),
}


def test_every_corpus_file_is_tested_and_documented() -> None:
    files = {p.name for p in CORPUS.glob("*.eml")}
    assert files == set(EXPECTED)
    readme = (CORPUS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in files)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus(name: str) -> None:
    bounce_local, verdict, findings, ids, message_id = EXPECTED[name]
    report = read_report((CORPUS / name).read_bytes(), bounce_local=bounce_local)
    assert report.verdict == verdict, report.detail
    assert [(f.kind, f.recipient, f.status) for f in report.findings] == findings
    for finding in report.findings:
        assert finding.message_id == message_id
        assert finding.tag is not None and read_tag(KEYS, finding.tag) == ids
        assert finding.diagnostic and "\n" not in finding.diagnostic and len(finding.diagnostic) <= 500
    assert report.reported_at is not None and report.reported_at.tzinfo == UTC
    assert report.detail and "\n" not in report.detail


def test_details_name_what_happened() -> None:
    report = read_report((CORPUS / "exchange-o365-5.1.10-recipient-not-found.eml").read_bytes())
    assert report.detail.startswith("DSN from XX1PR01MB0001")
    assert "5.1.10 (hard) for buergerbuero@landkreis-beispiel.example" in report.detail
    gmx = read_report((CORPUS / "gmx-dsn-de-5.0.0-unbekannt.eml").read_bytes())
    assert gmx.reported_at == datetime(2026, 3, 1, 7, 6, 40, tzinfo=UTC)
    assert "unbekannt" in (gmx.findings[0].diagnostic or "")
    ooo = read_report((CORPUS / "ooo-de-abwesenheitsnotiz.eml").read_bytes())
    assert "Abwesenheitsnotiz" in ooo.detail
    delayed = read_report((CORPUS / "dsn-delayed-4.4.1.eml").read_bytes())
    assert "4.4.1 for info@langsam-beispiel.example" in delayed.detail


def test_postfix_dsn_without_our_local_part_has_no_tag() -> None:
    # The real Postfix DSNs went to root+TAG@localhost: with the default local part no tag.
    report = read_report((CORPUS / "postfix-5.1.1-unknown-user.eml").read_bytes())
    assert report.verdict == "bounce" and report.findings[0].tag is None
    assert report.findings[0].message_id == "<2026-03.42.1001@newsletter.localhost>"


def test_a_forged_tag_is_found_but_does_not_verify() -> None:
    raw = (CORPUS / "gmail-5.1.1-address-not-found.eml").read_bytes()
    genuine = "aaaaaaaafqaaaaaaa7j6et5jlnivcvkv"
    forged = "aaaaaaaafqaaaaaaa7j6et5jlnivcvkw"
    report = read_report(raw.replace(genuine.encode(), forged.encode()))
    assert report.verdict == "bounce"
    assert report.findings[0].tag == forged
    assert read_tag(KEYS, forged) is None


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe garbage \x80\x81" * 50,
    bytes(range(256)) * 4,
    b"\r\n\r\n\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
    b"Content-Type: message/delivery-status\n\nAction\n--x",
    b"From: a@b\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"q\"\n\n--q\n"
    b"Content-Type: message/feedback-report\n\n\xff\xfe\n--q--\n",
    b"Date: not a date\nSubject: =?bogus?x?zzz?=\n\nhello",
])
def test_garbage_never_raises(raw: bytes) -> None:
    report = read_report(raw)
    assert report.verdict in {"unrecognised", "complaint", "auto_reply"}
    assert report.detail and "\n" not in report.detail


def test_non_bytes_and_internal_errors_become_unrecognised(monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_report("a str").verdict == "unrecognised"  # type: ignore[arg-type]

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(reports, "_dsn", boom)
    report = read_report((CORPUS / "gmail-5.1.1-address-not-found.eml").read_bytes())
    assert report.verdict == "unrecognised" and "detector exploded" in report.detail


def test_flufl_failure_is_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(msg: object) -> None:
        raise ValueError("bad")

    monkeypatch.setattr(reports.flufl.bounce, "all_failures", boom)
    report = read_report((CORPUS / "human-reply.eml").read_bytes())
    assert report.verdict == "unrecognised" and "flufl.bounce failed" in report.detail


SUCCESS_DSN = b"""From: MAILER-DAEMON@relay.example.org
To: bounces@newsletter.example.org
Subject: Successful Mail Delivery Report
Date: Sun, 01 Mar 2026 08:00:00 +0100
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

Your message was successfully delivered.

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.org

Final-Recipient: rfc822; anna@example.org
Action: relayed
Status: 2.0.0

--b--
"""


def test_dsn_that_reports_success_counts_nothing() -> None:
    report = read_report(SUCCESS_DSN)
    assert report.verdict == "auto_reply" and report.findings == ()
    assert "relayed for anna@example.org" in report.detail


def test_arf_not_spam_counts_nothing() -> None:
    raw = (CORPUS / "arf-gmx-abuse.eml").read_bytes()
    raw = raw.replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    report = read_report(raw)
    assert report.verdict == "auto_reply" and report.findings == ()


def test_long_diagnostic_is_cut_to_one_line_of_500() -> None:
    raw = (CORPUS / "gmail-5.1.1-address-not-found.eml").read_bytes()
    raw = re.sub(rb"Diagnostic-Code: smtp; ", b"Diagnostic-Code: smtp; " + b"x" * 800 + b"\n ", raw)
    finding = read_report(raw).findings[0]
    assert finding.diagnostic is not None and len(finding.diagnostic) == 500


@pytest.mark.parametrize(("status", "diagnostic", "permanent", "kind"), [
    ("5.1.1", None, True, "hard"),
    ("5.1.10", None, True, "hard"),
    ("5.1.2", None, True, "hard"),
    ("5.1.7", None, True, "soft"),  # about our sender address
    ("5.1.8", None, True, "soft"),
    ("5.2.1", None, True, "hard"),  # mailbox disabled
    ("5.2.2", None, True, "soft"),  # mailbox full
    ("5.2.3", None, True, "soft"),
    ("5.3.0", None, True, "soft"),
    ("5.4.4", None, True, "hard"),  # no such domain
    ("5.4.1", None, True, "soft"),
    ("5.7.1", "550 5.7.1 rejected as spam", True, "soft"),
    ("5.7.1", "User unknown", True, "soft"),  # policy: not the address's fault
    ("4.2.2", None, True, "soft"),
    ("4.4.7", None, False, "soft"),
    ("5.0.0", "mailbox unavailable", True, "soft"),
    ("5.0.0", "550 No such user here", True, "hard"),
    ("5.0.0", "Adresse existiert nicht", True, "hard"),
    ("5.0.0", "smtp; 550 5.1.1 <a@b>: Recipient address rejected", True, "hard"),  # better code inside
    (None, "550 5.2.2 mailbox full", True, "soft"),
    (None, "Sorry, no mailbox here by that name.", True, "hard"),
    (None, "user is over quota", True, "soft"),
    (None, "connection timed out", False, "soft"),
    ("5.0.0 (permanent failure)", None, True, "soft"),
])
def test_policy(status: str | None, diagnostic: str | None, permanent: bool, kind: str) -> None:
    assert classify(status, diagnostic, permanent=permanent) == kind


def test_status_pattern_ignores_ip_addresses_and_versions() -> None:
    assert reports.effective_status(None, "host 192.168.5.1.1 said hello, Exim 4.96") is None
    assert reports.effective_status(None, "host [192.0.2.41]: 550 5.1.1 unknown") == "5.1.1"
