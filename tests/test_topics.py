"""Topics on sections (docs/topics.md), in real sends into the Maildir outbox on SQLite and
PostgreSQL: each member gets the untagged sections and those of the topics they chose, in both
parts; no choice is everything; each distinct selection is rendered once; a member left without
a section, or paused, is skipped with the reason; an undeclared topic key stops the send."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SmtpServer
from test_send_support import outbox_parts
from typer.testing import CliRunner

import newsletter.delivery.variants as variants_module
from newsletter.audience.preferences import Preferences
from newsletter.cli import app
from newsletter.content.validate import load_issue
from newsletter.db.schema import utcnow
from newsletter.delivery.dryrun import dry_run
from newsletter.delivery.message import Recipient
from newsletter.delivery.records import JournalReader
from newsletter.errors import IssueInvalid
from newsletter.project import Project, open_project

pytestmark = pytest.mark.backends

TOPICS = """
[topics.news]
verkehr = "Verkehr und Mobilität"
bildung = "Schulen und Bildung"
kultur = "Kultur"
sport = "Sport"
"""

# Each section's marker appears in its body only: which markers a mail has = which sections.
MARKERS = {"XALLGEMEIN": None, "XVERKEHR": ["verkehr"], "XBILDUNG": ["bildung"],
           "XSCHULWEG": ["verkehr", "bildung"], "XKULTUR": ["kultur"]}

CSV = """email,name
ohne.wahl@example.org,Ohne Wahl
verkehr1@example.org,Verkehr Eins
verkehr2@example.org,Verkehr Zwei
verkehr.sport@example.org,Verkehr Sport
bildung@example.org,Bildung Eins
beides@example.org,Verkehr Bildung
nur.sport@example.org,Nur Sport
"""

CHOICES = {  # member → topics chosen on the preference page (none: no choice)
    "verkehr1@example.org": ["verkehr"], "verkehr2@example.org": ["verkehr"],
    "verkehr.sport@example.org": ["verkehr", "sport"], "bildung@example.org": ["bildung"],
    "beides@example.org": ["verkehr", "bildung"], "nur.sport@example.org": ["sport"],
}


def _issue(project: Project, name: str = "themen", *, untagged: bool = True,
           keys: dict[str, str] | None = None) -> Path:
    """An issue with one text section per marker (the XKULTUR one an article), tagged as in
    MARKERS; `keys` replaces a section's topic line (to misspell one)."""
    lines = ["subject: Themen im März", "preheader: Was Sie gewählt haben", "date: 2026-03-02",
             "intro: Einleitung für alle.", "sections:"]
    for marker, topics in MARKERS.items():
        if topics is None and not untagged:
            continue
        if marker == "XKULTUR":
            lines += ["  - kind: article", f"    heading: Abschnitt {marker.lower()}",
                      "    blocks:", f"      - text: Marker {marker}."]
        else:
            lines += ["  - kind: text", f"    heading: Abschnitt {marker.lower()}",
                      f"    body: Marker {marker}."]
        if topics is not None:
            line = f"    topics: [{', '.join(topics)}]"
            lines.append((keys or {}).get(line, line))
    path = project.issues_dir / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _with_members(project_dir: Path) -> Project:
    """The list `news` with topics declared and the members of CSV, their choices made on the
    preference page's code path."""
    config = project_dir / "newsletter.toml"
    config.write_text(config.read_text(encoding="utf-8") + TOPICS, encoding="utf-8")
    (project_dir / "subscribers" / "people.csv").write_text(CSV, encoding="utf-8")
    project = open_project(project_dir)
    project.import_subscribers(project_dir / "subscribers" / "people.csv", "news", confirmed=True,
                               create_list=True)
    for address, keys in CHOICES.items():
        _choose(project, address, keys)
    return project


@pytest.fixture
def members(project_dir: Path) -> Project:
    """Sending into the Maildir outbox."""
    return _with_members(project_dir)


@pytest.fixture
def smtp_members(project_dir: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Project:
    """Sending to the real SMTP server of `smtp_server`."""
    monkeypatch.setenv("NEWSLETTER_SMTP__HOST", smtp_server.host)
    monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(smtp_server.port))
    monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "none")
    return _with_members(project_dir)


def _ids(project: Project, address: str) -> tuple[int, int]:
    found = project.store.find_subscriber(address)
    assert found is not None
    return found.id, project.store.get_list("news").id


def _choose(project: Project, address: str, keys: list[str]) -> None:
    assert Preferences(project.store, project.settings.topics).choose_topics(*_ids(project, address), keys)


def _markers(part: str) -> set[str]:
    return set(re.findall(r"\bX[A-Z]+\b", part)) & set(MARKERS)


def _expected(keys: list[str] | None) -> set[str]:
    return {marker for marker, topics in MARKERS.items()
            if topics is None or keys is None or set(topics) & set(keys)}


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[Collection[str] | None]:
    """The topics of every variant the send renders (the full issue is the plan's render)."""
    calls: list[Collection[str] | None] = []
    real = variants_module.render_issue

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("topics"))
        return real(*args, **kwargs)

    monkeypatch.setattr(variants_module, "render_issue", counting)
    return calls


def test_each_member_gets_exactly_the_sections_of_their_topics(members: Project,
                                                                renders: list[Any]) -> None:
    path = _issue(members)
    report = members.send(path, "news")
    assert (report.sent, report.skipped) == (7, 0)
    got = outbox_parts(members)
    assert set(got) == {line.split(",")[0] for line in CSV.splitlines()[1:]}
    for address, (text, html) in got.items():
        keys = CHOICES.get(address)
        want = _expected(keys)
        assert _markers(text) == want, (address, "text")
        assert _markers(html) == want, (address, "html")
        assert "Einleitung für alle." in text and "Einleitung für alle." in html
    assert _markers(got["ohne.wahl@example.org"][0]) == set(MARKERS)  # no choice: everything
    # `sport` tags no section: "verkehr, sport" keeps what "verkehr" keeps (one variant), and
    # "sport" alone keeps the untagged section only.
    assert _markers(got["nur.sport@example.org"][0]) == {"XALLGEMEIN"}
    # One render per distinct selection of sections, however many members share it: verkehr
    # (three members), bildung, verkehr + bildung, sport; the full issue is the plan's.
    assert len(renders) == 4


def test_the_web_version_and_build_stay_the_full_issue(members: Project) -> None:
    issue = members.issue(_issue(members))
    assert _markers(issue.rendered.web_html) == set(MARKERS)
    assert _markers(issue.rendered.html) == set(MARKERS)


def test_a_member_without_any_section_left_is_skipped_with_the_reason(members: Project) -> None:
    path = _issue(members, "nur-themen", untagged=False)
    report = members.send(path, "news")
    assert (report.sent, report.skipped) == (6, 1)
    assert "nur.sport@example.org" not in outbox_parts(members)
    rows = {row.email: row for row in JournalReader(members.store).deliveries(report.send_id)}
    assert rows["nur.sport@example.org"].status == "skipped"
    assert rows["nur.sport@example.org"].smtp_reply == "not sent: no section for the chosen topics"
    assert all(row.status == "sent" for address, row in rows.items() if address != "nur.sport@example.org")


def test_a_paused_member_is_skipped_and_gets_the_sends_after_the_pause(members: Project) -> None:
    preferences = Preferences(members.store, members.settings.topics)
    sid, list_id = _ids(members, "ohne.wahl@example.org")
    until = preferences.pause(sid, list_id, 1)
    report = members.send(_issue(members), "news")
    assert (report.sent, report.skipped) == (6, 1)
    assert "ohne.wahl@example.org" not in outbox_parts(members)
    row = next(r for r in JournalReader(members.store).deliveries(report.send_id)
               if r.email == "ohne.wahl@example.org")
    assert (row.status, row.smtp_reply) == ("skipped", f"not sent: paused until {until:%Y-%m-%d}")

    # The pause has run out (taken two months ago, for one): the next issue reaches them.
    preferences.pause(sid, list_id, 1, now=utcnow() - timedelta(days=62))
    shutil.rmtree(members.outbox_dir)
    later = members.send(_issue(members, "themen-april"), "news")
    assert (later.sent, later.skipped) == (7, 0)
    assert _markers(outbox_parts(members)["ohne.wahl@example.org"][1]) == set(MARKERS)


def test_an_undeclared_topic_stops_the_send_and_validate_warns(members: Project) -> None:
    path = _issue(members, keys={"    topics: [bildung]": "    topics: [bildnug]"})
    line = path.read_text(encoding="utf-8").splitlines().index("    topics: [bildnug]") + 1
    with pytest.raises(IssueInvalid) as raised:
        members.send(path, "news")
    assert raised.value.lines() == [
        f"{path}:{line}:14: sections[2].topics[0]: topic `bildnug` is not declared for the list "
        "`news` (`[topics.news]` in newsletter.toml) (declared: `bildung`, `kultur`, `sport`, "
        "`verkehr`); did you mean `bildung`?"]
    assert outbox_parts(members) == {}
    # `validate` (no list yet): a warning against every list's topics, at the same place.
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert (f"{path}:{line}:14: warning: sections[2].topics[0]: topic `bildnug` is not declared by "
            "any `[topics.<list>]` in newsletter.toml (declared: `bildung`, `kultur`, `sport`, "
            "`verkehr`); did you mean `bildung`?") in result.output
    assert load_issue(path).warnings == []  # no project's topics given: nothing to check
    strict = CliRunner().invoke(app, ["validate", "--strict", str(path)])
    assert strict.exit_code == 1


def test_a_topic_key_must_be_lower_case(members: Project) -> None:
    path = _issue(members, keys={"    topics: [kultur]": "    topics: [Kultur]"})
    with pytest.raises(IssueInvalid, match=r"`Kultur` is not a topic key \(write `kultur`\)"):
        load_issue(path)


def test_topics_chosen_on_the_preference_page_are_honoured_by_the_next_send(members: Project) -> None:
    first = members.send(_issue(members), "news")
    assert _markers(outbox_parts(members)["ohne.wahl@example.org"][0]) == set(MARKERS)
    assert first.sent == 7

    _choose(members, "ohne.wahl@example.org", ["kultur"])
    _choose(members, "verkehr1@example.org", ["verkehr", "bildung", "kultur", "sport"])  # all: NULL
    shutil.rmtree(members.outbox_dir)
    members.send(_issue(members, "themen-april"), "news")
    got = outbox_parts(members)
    assert _markers(got["ohne.wahl@example.org"][0]) == {"XALLGEMEIN", "XKULTUR"}
    assert _markers(got["ohne.wahl@example.org"][1]) == {"XALLGEMEIN", "XKULTUR"}
    assert _markers(got["verkehr1@example.org"][1]) == set(MARKERS)


def test_a_resume_adds_a_new_member_with_their_variant(members: Project, renders: list[Any]) -> None:
    path = _issue(members)
    first = members.send(path, "news")
    plan = members.plan_send(path, "news")
    try:
        stored = JournalReader(plan.store).get(first.send_id)
        assert stored is not None and stored.content_hash == plan.issue.content_hash  # the full issue's
    finally:
        plan.store.close()
    (members.subscribers_dir / "new.csv").write_text("email,name\nneu@example.org,Neu\n", encoding="utf-8")
    members.import_subscribers(members.subscribers_dir / "new.csv", "news", confirmed=True)
    _choose(members, "neu@example.org", ["bildung"])
    shutil.rmtree(members.outbox_dir)
    renders.clear()
    again = members.send(path, "news")
    assert (again.send_id, again.sent, again.resumed) == (first.send_id, 8, True)
    got = outbox_parts(members)
    assert set(got) == {"neu@example.org"}  # nobody gets the issue twice
    assert _markers(got["neu@example.org"][0]) == _expected(["bildung"])
    assert len(renders) == 1  # only the variant someone in this run needs


def test_variants_over_smtp_share_the_sends_message_ids(smtp_members: Project,
                                                      smtp_server: SmtpServer) -> None:
    path = _issue(smtp_members)
    report = smtp_members.send(path, "news", concurrency=3)
    assert report.sent == 7
    plan = smtp_members.plan_send(path, "news")
    plan.store.close()
    list_id = smtp_members.store.get_list("news").id
    for received in smtp_server.messages:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        address = received.rcpt_tos[0]
        want = _expected(CHOICES.get(address))
        assert _markers(message.get_body(("plain",)).get_content()) == want
        assert _markers(message.get_body(("html",)).get_content()) == want
        # A recipient's Message-ID is the send's (full issue's), whichever variant they got.
        sid = _ids(smtp_members, address)[0]
        assert message["Message-ID"] == plan.issue.prepared.message_id(
            Recipient(address, None, sid, list_id))


def test_the_dry_run_writes_each_members_variant_and_says_who_is_left_out(members: Project) -> None:
    Preferences(members.store, members.settings.topics).pause(*_ids(members, "beides@example.org"), 3)
    plan = members.plan_send(_issue(members, "nur-themen", untagged=False), "news")
    left_out: list[str] = []
    try:
        directory, count = dry_run(plan, None, left_out)
    finally:
        plan.store.close()
    assert count == 5
    assert len(left_out) == 2 and left_out[0].startswith("beides@example.org: paused until 20")
    assert left_out[1] == "nur.sport@example.org: no section for the chosen topics"
    bodies = {path.name.split("-", 1)[1]: path.read_bytes() for path in directory.glob("*.eml")}
    assert len(bodies) == 5
    message = email.message_from_bytes(bodies["bildung@example.org.eml"], policy=email.policy.default)
    assert _markers(message.get_body(("plain",)).get_content()) == {"XBILDUNG", "XSCHULWEG"}


def test_preview_as_a_member_shows_their_variant(members: Project) -> None:
    from newsletter.web.preview_snapshot import build_snapshot

    path = _issue(members)
    for address in ("verkehr.sport@example.org", "bildung@example.org", "ohne.wahl@example.org"):
        snapshot = build_snapshot(members.root, path, sample=address)
        assert snapshot.ok, snapshot.errors
        keys = CHOICES.get(address)
        assert _markers(snapshot.html) == _markers(snapshot.text) == _expected(keys), address
    nothing = build_snapshot(members.root, _issue(members, "nur-themen", untagged=False),
                             sample="nur.sport@example.org")
    assert not nothing.ok
    assert "gets nothing of this issue: no section for their topics (sport)" in nothing.errors[0]


def test_the_send_summary_counts_the_paused_members(members: Project) -> None:
    from typer.testing import CliRunner

    from newsletter.cli import app

    preferences = Preferences(members.store, members.settings.topics)
    preferences.pause(*_ids(members, "ohne.wahl@example.org"), 3)
    result = CliRunner().invoke(app, ["send", str(_issue(members)), "--list", "news", "--yes",
                                      "--project", str(members.root)])
    assert result.exit_code == 0, result.output
    assert "Recipients: 7 subscribed, 1 of them paused (skipped)" in result.output
