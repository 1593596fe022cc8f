"""The prepared message: correct MIME, safe personalisation, header injection refused, DKIM."""

from __future__ import annotations

import base64
import re
import subprocess
from dataclasses import dataclass, replace
from email.policy import SMTP

import dkim
import pytest
from test_send_support import LONG_BASE_URL, header_line, parse

from newsletter.delivery.message import Recipient, confirmation_message, prepare
from newsletter.errors import HeaderInjection
from newsletter.project import open_project
from newsletter.render.html import UNSUBSCRIBE_PLACEHOLDER

P = UNSUBSCRIBE_PLACEHOLDER


@dataclass(frozen=True)
class Rendered:
    slug: str = "2026-02"
    subject: str = "Grüße aus Köln – Übersicht"
    html: str = "<p>Hallo</p>"
    text: str = "Hallo"


def url_for(token: str) -> str:
    return f"{LONG_BASE_URL}/u/{token}"


@pytest.fixture
def project(project_dir, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_NEWSLETTER__BASE_URL", LONG_BASE_URL)
    return open_project(project_dir)


TOKEN = "WzEyMzQ1LDJd.Xy9nUcYzq8YQ2k3u7oVh5fA1b2Q"


@pytest.mark.parametrize("column", range(0, 90, 7))
def test_placeholder_never_split_whatever_its_position(project, column):
    """Quoted-printable soft breaks every 76 octets must not break the substitution."""
    line = "ä" * column + f'<a href="{P}">abmelden</a>' + "x" * 200 + "ö" * 30
    rendered = Rendered(html=f"<html><body>{line}\n{line}</body></html>\n",
                        text=f"{'y' * column}{P}{'z' * 90}\nAbmelden: {P}\n")
    raw = prepare(project, rendered, list_name="news").personalise(Recipient("a@example.org"), TOKEN)
    message = parse(raw)
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert html.count(f'href="{url_for(TOKEN)}"') == 2
    assert text.count(url_for(TOKEN)) == 2
    assert text.startswith("y" * column + url_for(TOKEN) + "z" * 90)
    assert P not in html and P not in text
    assert all(len(line) <= 76 for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))
    assert not message.defects and all(not p.defects for p in message.walk())


def test_headers_on_the_wire(project):
    raw = prepare(project, Rendered(), list_name="news", list_title="Smart zu wissen").personalise(
        Recipient("bernd.mueller@example.org", "Bernd Müller", 7, 1), TOKEN)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert header_line(raw, b"List-Unsubscribe") == f"List-Unsubscribe: <{url_for(TOKEN)}>".encode()
    assert header_line(raw, b"List-Unsubscribe-Post") == b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    assert b"=?utf-8?" in header_line(raw, b"Subject")
    assert b"=?utf-8?" in header_line(raw, b"To")
    message = parse(raw)
    assert message["Subject"] == "Grüße aus Köln – Übersicht"
    assert message["To"].addresses[0].display_name == "Bernd Müller"
    assert message["From"].addresses[0].addr_spec == "newsletter@example.org"
    assert message["Reply-To"].addresses[0].addr_spec == "redaktion@example.org"
    assert re.fullmatch(r"<[0-9a-f]+\.nl@example\.org>", message["Message-ID"])
    assert not message.defects


def test_message_ids_unique_per_recipient_and_stable_on_resume(project):
    prepared = prepare(project, Rendered(), list_name="news")
    ids = {prepared.message_id(Recipient(f"p{i}@example.org", None, i, 1)) for i in range(1, 200)}
    assert len(ids) == 199
    again = prepare(project, Rendered(), list_name="news")
    assert again.message_id(Recipient("p1@example.org", None, 1, 1)) == prepared.message_id(
        Recipient("p1@example.org", None, 1, 1))


def test_message_ids_change_with_the_content_and_are_keyed_by_the_secret(project_dir, monkeypatch):
    """After `--force` with new content the Message-IDs are new (clients would drop the new
    version as a duplicate of the old); they cannot be computed without the project's secret."""
    monkeypatch.setenv("NEWSLETTER_SECRET__TOKEN", "a" * 32)
    project = open_project(project_dir)
    someone = Recipient("p1@example.org", None, 1, 1)
    first = prepare(project, Rendered(), list_name="news").message_id(someone)
    assert prepare(project, Rendered(), list_name="news").message_id(someone) == first
    for changed in (Rendered(html="<p>Hallo!</p>"), Rendered(text="Hallo!"),
                    Rendered(subject="Neu")):
        assert prepare(project, changed, list_name="news").message_id(someone) != first
    monkeypatch.setenv("NEWSLETTER_SECRET__TOKEN", "b" * 32)
    other_secret = open_project(project_dir)
    assert prepare(other_secret, Rendered(), list_name="news").message_id(someone) != first


@pytest.mark.parametrize("field, value", [
    ("subject", "Hallo\r\nBcc: everyone@example.org"),
    ("subject", "Hallo\nX-Evil: 1"),
    ("subject", "tab\x0bvertical"),
])
def test_control_characters_in_subject_are_refused(project, field, value):
    with pytest.raises(HeaderInjection, match="subject"):
        prepare(project, replace(Rendered(), **{field: value}))


def test_control_characters_in_a_subscriber_address_are_refused(project):
    prepared = prepare(project, Rendered())
    with pytest.raises(HeaderInjection):
        prepared.personalise(Recipient("a@example.org\r\nBcc: x@example.org", None, 1, 1), TOKEN)


@pytest.mark.parametrize("name", ["Anna\r\nBcc: x@example.org", "Anna\x00", "Anna\x1b[31m", "A" * 101])
def test_a_name_that_cannot_be_sent_is_left_out_not_injected(project, name):
    """A stored name the name rule refuses (written before it existed) never fails the
    recipient and never reaches the header: the message goes to the bare address."""
    raw = prepare(project, Rendered()).personalise(Recipient("a@example.org", name, 1, 1), TOKEN)
    assert header_line(raw, b"To") == b"To: a@example.org"
    assert b"Bcc" not in raw.split(b"\r\n\r\n", 1)[0]


def test_control_characters_in_config_are_refused(project_dir, monkeypatch):
    from newsletter.errors import ConfigError

    monkeypatch.setenv("NEWSLETTER_NEWSLETTER__FROM", "x <a@example.org>\r\nBcc: y@example.org")
    with pytest.raises(ConfigError, match="control characters"):
        open_project(project_dir)


def test_dkim_signature_verifies_and_covers_the_list_headers(project_dir, monkeypatch, tmp_path):
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public_der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                                check=True, capture_output=True).stdout
    monkeypatch.setenv("NEWSLETTER_SECRET__DKIM_KEY_FILE", str(key))
    monkeypatch.setenv("NEWSLETTER_SECRET__DKIM_SELECTOR", "nl2026")
    project = open_project(project_dir)
    raw = prepare(project, Rendered(text=f"Abmelden: {P}\n"), list_name="news").personalise(
        Recipient("a@example.org", "Anna", 1, 1), TOKEN)
    assert raw.startswith(b"DKIM-Signature:")
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"nl2026._domainkey.example.org."
        return record

    assert dkim.verify(raw, dnsfunc=dns)
    signed = re.search(rb"h=([^;]+);", re.sub(rb"\r\n\s+", b"", raw.split(b"\r\n\r\n")[0])).group(1)
    names = {h.strip().lower() for h in signed.split(b":")}
    assert {b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
            b"list-unsubscribe-post"} <= names
    # Tampering with the unsubscribe header breaks the signature.
    head, body = raw.split(b"\r\n\r\n", 1)
    forged = head.replace(TOKEN.encode(), b"WzEsMV0.forged") + b"\r\n\r\n" + body
    assert forged != raw
    assert not dkim.verify(forged, dnsfunc=dns)


def test_no_line_of_a_personalised_message_starts_with_a_dot(project):
    """`personalise` promises `dot_safe` to SMTP (no dot-stuffing search per recipient): every
    line starting with "." is encoded as "=2E", whatever the text and the substituted values."""
    dots = "\n".join([".", ". Punkt", ".." * 40, "x" * 75 + ".y", f"{P}", f".{P}."]) + "\n"
    rendered = Rendered(text=dots, html=f"<p>{dots}</p>\n.<a href=\"{P}\">.</a>\n")
    prepared = prepare(project, rendered, list_name="news")
    for recipient in (Recipient("a@example.org"), Recipient("b@example.org", "." * 80, 3, 1)):
        raw = prepared.personalise(recipient, "." + TOKEN)
        assert b"\r\n." not in raw and not raw.startswith(b".")
        body = parse(raw).get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert body.startswith(".\n. Punkt\n" + ".." * 40)


def test_confirmation_message(project, monkeypatch):
    message = confirmation_message(project, "anna@bücher.example", "Bitte bestätigen",
                                   "Text\n", "<p>HTML</p>\n")
    raw = message.as_bytes(policy=SMTP)
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()
    parsed = parse(raw)
    assert parsed["To"] == "anna@xn--bcher-kva.example"  # punycode, no name
    assert parsed["From"].addresses[0].addr_spec == "newsletter@example.org"
    assert parsed["Reply-To"].addresses[0].addr_spec == "redaktion@example.org"
    assert parsed["Subject"] == "Bitte bestätigen"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert re.fullmatch(r"<[^@<>]+@example\.org>", parsed["Message-ID"]) and parsed["Date"]
    assert parsed.get_body(("html",)).get_content().rstrip() == "<p>HTML</p>"
    for to, subject in (("a@example.org\r\nBcc: x@example.org", "ok"), ("a@example.org", "x\nBcc: y")):
        with pytest.raises(HeaderInjection):
            confirmation_message(project, to, subject, "t", "h")
