"""Mailbox sources against a real Dovecot (IMAPS and POP3S with TLS on 127.0.0.1, see
tests/imapserver.py), a real Maildir and a real mbox: fetch, mark, a re-run sees nothing new,
an unreadable message is kept and reported, errors are one line without the password."""

from __future__ import annotations

import mailbox
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from imap_tools import MailBox
from imapserver import ImapServer, ImapServerUnavailable, start_server

from newsletter.errors import NewsletterError
from newsletter.feedback.mailboxes import (
    PROCESSED_FOLDER,
    UNREADABLE_KEYWORD,
    MailboxError,
    Source,
    digest,
    open_source,
)
from newsletter.feedback.reports import read_report

CORPUS = Path(__file__).parent / "feedback_corpus"
READABLE = ["gmail-5.1.1-address-not-found.eml", "arf-gmx-abuse.eml", "ooo-de-abwesenheitsnotiz.eml"]
# A message our reader cannot make sense of: kept, never lost.
UNREADABLE = b"From: someone@example.org\r\nSubject: ???\r\n\r\n%%% not a report %%%\r\n"


def corpus_messages() -> list[bytes]:
    return [(CORPUS / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for name in READABLE]


def process(source: Source) -> tuple[list[str], list[str]]:
    """What `newsletter bounces fetch` will do: read, record (here: collect), then mark."""
    recorded, kept = [], []
    for item in source.messages():
        report = read_report(item.raw)
        if report.verdict == "unrecognised":
            source.keep(item.key, report.detail)
            kept.append(item.digest)
        else:
            recorded.append(report.verdict)
            source.done(item.key)
    return recorded, kept


# --- Dovecot ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot() -> Iterator[ImapServer]:
    try:
        server = start_server()
    except ImapServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def imap(dovecot: ImapServer) -> Iterator[ImapServer]:
    """The server with an empty INBOX and no Processed folder, and the test messages appended."""
    with _client(dovecot) as box:
        box.folder.set("INBOX")
        box.delete(box.uids("ALL"))
        if box.folder.exists(PROCESSED_FOLDER):
            box.folder.delete(PROCESSED_FOLDER)
        for raw in [*corpus_messages(), UNREADABLE]:
            box.append(raw, "INBOX")
    yield dovecot


def _client(server: ImapServer) -> MailBox:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    return MailBox("127.0.0.1", server.imaps_port, ssl_context=context).login(server.user, server.password)


def test_imaps_fetch_mark_and_rerun(imap: ImapServer) -> None:
    with open_source(imap.imaps_url(), password=imap.password, ca_file=imap.ca_file) as source:
        recorded, kept = process(source)
        assert source.kept and "not a bounce" in source.kept[0][1]
    assert sorted(recorded) == ["auto_reply", "bounce", "complaint"]
    assert kept == [digest(UNREADABLE)]

    with open_source(imap.imaps_url(), password=imap.password, ca_file=imap.ca_file) as source:
        again = list(source.messages())
    assert [item.digest for item in again] == kept  # only the kept one, nothing counted twice

    with _client(imap) as box:
        box.folder.set(PROCESSED_FOLDER)
        assert len(box.uids("ALL")) == 3
        box.folder.set("INBOX")
        left = list(box.fetch(mark_seen=False))
        assert len(left) == 1 and UNREADABLE_KEYWORD in left[0].flags and "\\Seen" not in left[0].flags


def test_imaps_fetch_leaves_seen_flag_alone(imap: ImapServer) -> None:
    with open_source(imap.imaps_url(), password=imap.password, ca_file=imap.ca_file) as source:
        assert len(list(source.messages())) == 4
    with _client(imap) as box:
        assert all("\\Seen" not in m.flags for m in box.fetch(mark_seen=False, headers_only=True))


def test_imaps_done_only_after_the_caller_confirms(imap: ImapServer) -> None:
    with open_source(imap.imaps_url(), password=imap.password, ca_file=imap.ca_file) as source:
        items = list(source.messages())
        source.done(items[0].key)
        # the caller "crashes" before confirming the others
    with open_source(imap.imaps_url(), password=imap.password, ca_file=imap.ca_file) as source:
        assert [i.digest for i in source.messages()] == [i.digest for i in items[1:]]






def test_imaps_untrusted_certificate_is_refused(dovecot: ImapServer) -> None:
    with pytest.raises(MailboxError, match="TLS certificate not trusted") as caught:
        open_source(dovecot.imaps_url(), password=dovecot.password)
    assert "\n" not in str(caught.value)


def test_plain_imap_and_pop3_are_refused() -> None:
    for url in ("imap://bounces@127.0.0.1:143/INBOX", "pop3://bounces@127.0.0.1:110"):
        with pytest.raises(MailboxError, match="refusing to log in without TLS"):
            open_source(url, password="x")


def test_starttls_on_a_tls_only_port_fails_cleanly(dovecot: ImapServer) -> None:
    url = dovecot.imaps_url().replace("imaps://", "imap+starttls://")
    with pytest.raises(MailboxError) as caught:
        open_source(url, password=dovecot.password, ca_file=dovecot.ca_file, timeout=1)
    assert "\n" not in str(caught.value)


def test_unreachable_host_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for url in (f"imaps://u@127.0.0.1:{port}/INBOX", f"pop3s://u@127.0.0.1:{port}"):
        with pytest.raises(MailboxError, match="connection refused"):
            open_source(url, password="x", timeout=5)


def test_pop3s_fetch_delete_after_confirm_and_rerun(imap: ImapServer) -> None:
    with open_source(imap.pop3s_url(), password=imap.password, ca_file=imap.ca_file) as source:
        recorded, kept = process(source)
    assert sorted(recorded) == ["auto_reply", "bounce", "complaint"]
    assert kept == [digest(UNREADABLE)]
    with open_source(imap.pop3s_url(), password=imap.password, ca_file=imap.ca_file) as source:
        assert [item.digest for item in source.messages()] == kept


def test_pop3s_broken_session_undoes_deletions(imap: ImapServer) -> None:
    source = open_source(imap.pop3s_url(), password=imap.password, ca_file=imap.ca_file)
    items = list(source.messages())
    assert len(items) == 4
    source.done(items[0].key)
    # The connection drops before QUIT (a shutdown, since close() would wait for the file object).
    source._pop.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
    source.close()
    with open_source(imap.pop3s_url(), password=imap.password, ca_file=imap.ca_file) as source:
        assert [i.digest for i in source.messages()] == [i.digest for i in items]




def test_pop3s_untrusted_certificate_is_refused(dovecot: ImapServer) -> None:
    with pytest.raises(MailboxError, match="TLS certificate not trusted"):
        open_source(dovecot.pop3s_url(), password=dovecot.password)


# --- Maildir ------------------------------------------------------------------------------------


def test_maildir_fetch_move_and_rerun(tmp_path: Path) -> None:
    path = tmp_path / "Maildir"
    box = mailbox.Maildir(path, create=True)
    for raw in [*corpus_messages(), UNREADABLE]:
        box.add(raw)
    with open_source(str(path)) as source:
        recorded, kept = process(source)
    assert sorted(recorded) == ["auto_reply", "bounce", "complaint"]
    with open_source(str(path)) as source:
        assert [item.digest for item in source.messages()] == kept == [digest(UNREADABLE)]
    processed = mailbox.Maildir(path / f".{PROCESSED_FOLDER}", create=False)
    assert len(processed) == 3
    assert len(mailbox.Maildir(path, create=False)) == 1


def test_missing_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MailboxError, match=r"^mailbox .*nowhere: no such Maildir directory or mbox file$"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "plain-dir").mkdir()
    with pytest.raises(MailboxError, match="not a Maildir"):
        open_source(str(tmp_path / "plain-dir"))


# --- mbox ---------------------------------------------------------------------------------------


def test_mbox_fetch_mark_rerun_and_append(tmp_path: Path) -> None:
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path, create=True)
    for raw in [*corpus_messages(), UNREADABLE]:
        box.add(raw)
    box.flush()
    box.close()
    before = path.read_bytes()
    with open_source(str(path)) as source:
        recorded, kept = process(source)
    assert sorted(recorded) == ["auto_reply", "bounce", "complaint"]
    assert path.read_bytes() == before  # never rewritten
    assert len((tmp_path / "bounces.mbox.processed").read_text().split()) == 3

    with open_source(str(path)) as source:
        assert [item.digest for item in source.messages()] == kept

    late = (CORPUS / "exim-5.1.1-unknown-user.eml").read_bytes()
    box = mailbox.mbox(path, create=False)
    box.add(late)
    box.flush()
    box.close()
    with open_source(str(path)) as source:
        items = list(source.messages())
        assert len(items) == 2 and read_report(items[-1].raw).verdict == "bounce"
        source.done(items[-1].key)
    with open_source(str(path)) as source:
        assert [item.digest for item in source.messages()] == kept


def test_mbox_locked_by_another_program(tmp_path: Path) -> None:
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path, create=True)
    box.add(UNREADABLE)
    box.flush()
    box.lock()
    try:
        with pytest.raises(MailboxError, match="locked by another program"), open_source(str(path)) as source:
            list(source.messages())
    finally:
        box.unlock()
        box.close()


# --- wrong passwords last: Dovecot delays the next login from the same IP after a failure ----


def test_imaps_wrong_password_is_one_line(dovecot: ImapServer) -> None:
    with pytest.raises(MailboxError) as caught:
        open_source(dovecot.imaps_url(), password="wrong-password", ca_file=dovecot.ca_file)
    message = str(caught.value)
    assert isinstance(caught.value, NewsletterError)
    assert "\n" not in message and "wrong-password" not in message
    assert message.startswith(f"mailbox {dovecot.imaps_url()}: login failed")


def test_imaps_password_in_url_never_shown(dovecot: ImapServer) -> None:
    url = dovecot.imaps_url().replace(f"{dovecot.user}@", f"{dovecot.user}:hunter2-secret@")
    with pytest.raises(MailboxError) as caught:
        open_source(url, ca_file=dovecot.ca_file)
    assert "hunter2" not in str(caught.value) and "login failed" in str(caught.value)


def test_pop3s_wrong_password_is_one_line(dovecot: ImapServer) -> None:
    with pytest.raises(MailboxError) as caught:
        open_source(dovecot.pop3s_url(), password="wrong-password", ca_file=dovecot.ca_file)
    message = str(caught.value)
    assert message.startswith(f"mailbox {dovecot.pop3s_url()}: login failed")
    assert "\n" not in message and "wrong-password" not in message
