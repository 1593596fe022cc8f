"""A send to a segment (`send --list news --segment jena`): only the segment's members get the
issue; the journal keys the send by (issue, list, segment), so a segment's send resumes on its
own and the same issue can go to two segments of one list; the summary shows the counts. And
the journal's scheduled sends (`Journal.schedule`, `cancel`, `start(scheduled=<due>)`): one
start, whichever process asks first. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from test_segments import imported, write_segments  # noqa: F401  (the fixture is used by name)
from test_send_support import ISSUE, outbox_parts, wait_out_the_lease
from typer.testing import CliRunner, Result

from newsletter.audience.store import open_store
from newsletter.audience.tables import subscribers
from newsletter.cli import app
from newsletter.db.schema import utcnow
from newsletter.delivery.journal import AlreadyStarted, ContentChanged, Journal
from newsletter.delivery.lease import Worker
from newsletter.errors import NewsletterError
from newsletter.project import open_project

pytestmark = pytest.mark.backends

SEGMENTS = {"jena": 'Kommune = "Jena"', "politik": 'Rolle = "Politik"'}


@pytest.fixture
def run(imported: Path):  # noqa: F811
    write_segments(imported, SEGMENTS, lists={"jena": "news"})
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, "--project", str(imported)])

    return invoke


def recipients(root: Path) -> set[str]:
    with open_project(root) as project:
        return set(outbox_parts(project))


def test_a_segment_send_reaches_only_its_members_and_is_a_send_of_its_own(run, imported: Path) -> None:  # noqa: F811
    sent = run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes")
    assert sent.exit_code == 0, sent.output
    jena = {"anna@jena.de", "bernd@jena.de"}  # not Dora: her Kommune is "jena", values are exact
    assert recipients(imported) == jena
    assert "Segment:    jena: Kommune = \"Jena\"" in sent.output
    assert "Recipients: 2 of 5 subscribed" in sent.output

    again = run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes")
    assert again.exit_code == 0, again.output
    assert "is complete (2 sent)" in again.output
    assert "to news / jena is complete" in again.output

    # The same issue to another segment of the list is another send; people already mailed by
    # the first are in it again (a segment is an audience, not a remainder).
    politik = run("send", str(imported / ISSUE), "--list", "news", "--segment", "politik", "--yes")
    assert politik.exit_code == 0, politik.output
    listed = run("sends", "ls", "--json")
    sends = {(s["list"], s["segment"]): s for s in json.loads(listed.stdout)}
    assert set(sends) == {("news", "jena"), ("news", "politik")}
    assert sends[("news", "jena")]["counts"]["sent"] == 2
    assert sends[("news", "politik")]["counts"]["sent"] == 2  # Carla and Dora
    table = run("sends", "ls")
    assert "news / jena" in table.stdout and "news / politik" in table.stdout


def test_a_resumed_segment_send_adds_new_members_of_the_segment_only(run, imported: Path) -> None:  # noqa: F811
    assert run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes").exit_code == 0
    with open_project(imported) as project:
        news = project.store.get_list("news")
        for address, kommune in (("neu@jena.de", "Jena"), ("neu@erfurt.de", "Erfurt")):
            project.store.add_subscriber(address, news.id, confirmed=True)
            with project.store.write() as conn:
                conn.execute(subscribers.update().where(subscribers.c.email == address)
                             .values(attributes={"Kommune": kommune}))
    resumed = run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes")
    assert resumed.exit_code == 0, resumed.output
    assert "1 member(s) joined the list since" in resumed.output
    assert recipients(imported) == {"anna@jena.de", "bernd@jena.de", "neu@jena.de"}


def test_segment_mistakes_are_one_line(run, imported: Path) -> None:  # noqa: F811
    unknown = run("send", str(imported / ISSUE), "--list", "news", "--segment", "nope", "--yes")
    assert unknown.exit_code == 1
    assert "no segment named `nope`; known segments: jena, politik" in unknown.stderr
    wrong = run("send", str(imported / ISSUE), "--list", "other", "--segment", "jena", "--yes")
    assert wrong.exit_code == 1 and "belongs to the list `news`" in wrong.stderr
    alone = run("send", str(imported / ISSUE), "--segment", "jena", "--to", "x@example.org")
    assert alone.exit_code == 2 and "--segment needs --list" in alone.output
    write_segments(imported, {"niemand": 'Kommune = "Gera"'})
    empty = run("send", str(imported / ISSUE), "--list", "news", "--segment", "niemand", "--yes")
    assert empty.exit_code == 1
    assert "the segment `niemand` of the list `news` has no subscribed members" in empty.stderr
    assert recipients(imported) == set()


def test_nobody_gets_the_issue_twice_from_two_sends_to_one_list(run, imported: Path) -> None:  # noqa: F811
    write_segments(imported, {"alle": 'created > "2000-01-01"'})
    assert run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes").exit_code == 0
    everyone = run("send", str(imported / ISSUE), "--list", "news", "--segment", "alle", "--yes")
    assert everyone.exit_code == 0, everyone.output
    assert "2 of them got this issue from another send to the list already" in everyone.output
    assert recipients(imported) == {"anna@jena.de", "bernd@jena.de", "carla@weimar.de",
                                    "dora@example.org", "emil@example.org"}
    rows = json.loads(run("sends", "show", "2", "--json").stdout)["deliveries"]
    skipped = {r["email"]: r["smtp_reply"] for r in rows if r["status"] == "skipped"}
    assert skipped == dict.fromkeys(["anna@jena.de", "bernd@jena.de"],
                                    "not sent: got this issue from another send to the list")
    whole = run("send", str(imported / ISSUE), "--list", "news", "--yes")  # the whole list: nobody new
    assert whole.exit_code == 0 and "5 of them got this issue" in whole.output
    assert len(list((imported / "outbox" / "new").iterdir())) == 5


def test_a_changed_condition_stops_the_resume_unless_forced(run, imported: Path) -> None:  # noqa: F811
    assert run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes").exit_code == 0
    config = imported / "newsletter.toml"
    config.write_text(config.read_text(encoding="utf-8").replace(
        'where = "Kommune = \\"Jena\\""', """where = 'Kommune in ["Jena", "Weimar"]'"""),
        encoding="utf-8")
    refused = run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes")
    assert refused.exit_code == 1
    assert "The segment's condition changed since send #1 started" in refused.output
    assert ("the condition of the segment `jena` changed since send #1 started: it was "
            '`Kommune = "Jena"`, it is `Kommune in ["Jena", "Weimar"]`') in " ".join(refused.output.split())
    assert recipients(imported) == {"anna@jena.de", "bernd@jena.de"}
    forced = run("send", str(imported / ISSUE), "--list", "news", "--segment", "jena", "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert recipients(imported) == {"anna@jena.de", "bernd@jena.de", "carla@weimar.de"}


def test_a_dry_run_of_a_segment_writes_its_members_only(run, imported: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "probe"
    dry = run("send", str(imported / ISSUE), "--list", "news", "--segment", "politik", "--dry-run",
              "--out", str(out))
    assert dry.exit_code == 0, dry.output
    assert "Wrote 2 personalised message(s) for the segment `politik` of the list `news`" in " ".join(
        dry.output.split())
    assert sorted(p.name.split("-", 1)[1] for p in out.iterdir()) == ["carla@weimar.de.eml",
                                                                      "dora@example.org.eml"]


def test_an_empty_segment_name_is_refused_not_the_whole_list(run, imported: Path) -> None:  # noqa: F811
    empty = run("send", str(imported / ISSUE), "--list", "news", "--segment", "", "--yes")
    assert empty.exit_code == 1 and "no segment named ``" in empty.stderr
    assert recipients(imported) == set()
    config = imported / "newsletter.toml"
    config.write_text(config.read_text(encoding="utf-8") + '\n[segments."a b"]\nwhere = "x"\n',
                      encoding="utf-8")
    bad = run("segments", "ls")
    assert bad.exit_code == 1 and "segment 'a b': a name of letters, digits" in bad.stderr


# --- scheduled sends in the journal ---------------------------------------------------------


def _schedule(journal: Journal, list_id: int, **changes):
    values = {"issue_slug": "2026-02", "list_id": list_id, "subject": "Februar", "content": "h1",
              "transport": "outbox", "at": utcnow() + timedelta(hours=1), "issue_path": ISSUE}
    return journal.schedule(**{**values, **changes})


def test_a_scheduled_send_starts_once_and_only_through_the_scheduler(imported: Path) -> None:  # noqa: F811
    with open_project(imported) as project:
        store = open_store(project)
        news = store.get_list("news")
        journal = Journal(store)
        info = _schedule(journal, news.id)
        assert (info.status, info.issue_path, info.counts["total"]) == ("scheduled", ISSUE, 0)
        assert journal.due() == []
        assert [s.id for s in journal.due(utcnow() + timedelta(hours=2))] == [info.id]
        with pytest.raises(NewsletterError, match=rf"is scheduled for .*cancel {info.id}"):
            _schedule(journal, news.id)
        start = {"issue_slug": "2026-02", "list_id": news.id, "subject": "Februar",
                 "content": "h2", "transport": "outbox"}
        with pytest.raises(NewsletterError, match=rf"scheduled for .* `newsletter sends cancel {info.id}`"):
            journal.start(**start, worker=Worker.here())
        # The scheduler's start: the issue as it is now (another hash) goes; all 5 members.
        resume = journal.start(**start, worker=Worker.here(), scheduled=info.scheduled_at)
        assert resume.send.id == info.id and resume.send.status == "running"
        assert len(resume.jobs) == 5 and resume.send.content_hash == "h2"
        # A second process polling at the same moment finds it started: nothing happens.
        with pytest.raises(AlreadyStarted):
            journal.start(**start, worker=Worker.here(), scheduled=info.scheduled_at)
        with pytest.raises(NewsletterError, match=f"send #{info.id} is running: only a scheduled"):
            journal.cancel(info.id)
        store.close()


def test_a_cancelled_send_never_starts_and_may_be_scheduled_again(imported: Path) -> None:  # noqa: F811
    write_segments(imported, SEGMENTS)
    with open_project(imported) as project:
        store = open_store(project)
        news = store.get_list("news")
        journal = Journal(store)
        info = _schedule(journal, news.id, segment="jena")
        cancelled = journal.cancel(info.id)
        assert cancelled.status == "cancelled" and "cancelled" in (cancelled.reason or "")
        assert journal.due(utcnow() + timedelta(days=1)) == []
        start = {"issue_slug": "2026-02", "list_id": news.id, "subject": "s", "content": "h",
                 "transport": "t", "segment": _segment(project, "jena")}
        with pytest.raises(AlreadyStarted):
            journal.start(**start, worker=Worker.here(), scheduled=info.scheduled_at)
        later = utcnow() + timedelta(days=1)
        again = _schedule(journal, news.id, segment="jena", at=later)
        assert (again.id, again.status) == (info.id, "scheduled")
        # A scheduler that listed it as due at the first time (before the cancel) neither
        # starts it nor calls it off: it is due tomorrow now.
        with pytest.raises(AlreadyStarted, match="is due at"):
            journal.start(**start, worker=Worker.here(), scheduled=info.scheduled_at)
        assert not journal.call_off(info.id, info.scheduled_at, "the list is empty")
        assert journal.start(**start, worker=Worker.here(), scheduled=again.scheduled_at).send.id == info.id
        with pytest.raises(NewsletterError, match="no send with ID 999"):
            journal.cancel(999)
        store.close()


def _segment(project, name: str):
    from newsletter.audience.segments import load_segment

    return load_segment(project, name)


def test_a_scheduled_send_whose_run_died_resumes_once_and_stops_if_the_issue_changed(
        imported: Path) -> None:  # noqa: F811
    with open_project(imported) as project:
        store = open_store(project)
        news = store.get_list("news")
        journal = Journal(store)
        info = _schedule(journal, news.id, at=utcnow())
        start = {"issue_slug": "2026-02", "list_id": news.id, "subject": "Februar",
                 "transport": "outbox", "scheduled": info.scheduled_at}
        journal.start(**start, content="h1", worker=Worker.here(0.2))  # then "killed": no finish
        assert journal.orphaned_scheduled() == []  # its lease is live
        wait_out_the_lease(store, info.id)
        assert [s.id for s in journal.orphaned_scheduled()] == [info.id]
        # The issue file was edited meanwhile: the resume is refused and the send interrupted
        # with the reason, so no scheduler tries it again; `send --list --force` resumes it.
        with pytest.raises(ContentChanged):
            journal.start(**start, content="h2", worker=Worker.here())
        journal.refuse_changed(info.id)
        stopped = journal.get(info.id)
        assert stopped is not None and stopped.status == "interrupted"
        assert (stopped.reason or "").startswith("resume refused: the issue changed")
        assert journal.orphaned_scheduled() == []
        store.close()
