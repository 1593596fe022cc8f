"""`newsletter send` and `newsletter sends` from the command line."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from test_send_support import make_list, parse
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.delivery.tables import deliveries, sends

pytestmark = pytest.mark.backends

runner = CliRunner()
ISSUE = "issues/2026-02.yaml"
# 73 characters: "Subject:    " + this is wider than 80 columns.
SUBJECT = "Smart zu wissen: Neue Wahlmodule, Peer-Learnings und der 8. MPSC-Kongress"


def run(project, *args, input=None):
    return runner.invoke(app, [*args, "--project", str(project.root)], input=input)


def test_send_to_a_list_into_the_outbox_then_history(project):
    make_list(project, 4)
    result = run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
    assert result.exit_code == 0, result.output
    assert "Recipients: 4 subscribed" in result.output
    assert "Maildir" in result.output and "4 sent" in result.output
    # Long lines are not broken at 80 columns when piped: the subject and the report stay whole.
    lines = result.output.splitlines()
    assert "Subject:    " + SUBJECT in lines
    assert any(line.startswith("Send #1 finished in ") and line.endswith(
        "4 sent, 0 failed permanently (0 bounced), 0 failed temporarily, 0 skipped "
        "(no longer subscribed), 0 pending.") for line in lines), result.output
    assert len(list((project.outbox_dir / "new").iterdir())) == 4

    listing = json.loads(run(project, "sends", "ls", "--json").stdout)
    assert [(s["issue"], s["list"], s["status"], s["reason"], s["possibly_duplicated"],
             s["counts"]["sent"]) for s in listing] == [("2026-02", "news", "finished", None, [], 4)]
    shown = json.loads(run(project, "sends", "show", str(listing[0]["id"]), "--json").stdout)
    assert len(shown["deliveries"]) == 4
    assert all(d["status"] == "sent" and d["smtp_reply"].startswith("250")
               and d["possibly_duplicated"] is False for d in shown["deliveries"])
    assert shown["possibly_duplicated"] == [] and shown["reason"] is None
    human = run(project, "sends", "show", str(listing[0]["id"]))
    assert human.exit_code == 0 and "person0000@example.org" in human.output
    assert "Subject: " + SUBJECT in human.output.splitlines()

    again = run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
    assert again.exit_code == 0
    assert again.output.strip() == ("Send #1 of 2026-02 to news is complete (4 sent) and nobody has "
                                    "joined the list since: nothing to send.")
    assert len(list((project.outbox_dir / "new").iterdir())) == 4  # nobody twice


def test_confirmation_prompt_no_sends_nothing(project):
    make_list(project, 2)
    result = run(project, "send", str(project.root / ISSUE), "--list", "news", input="n\n")
    assert result.exit_code == 1
    assert "Send now?" in result.output and "Nothing sent." in result.output
    assert not (project.outbox_dir / "new").exists()


def test_test_send_prefixes_the_subject(smtp_project, smtp_server):
    result = run(smtp_project, "send", str(smtp_project.root / ISSUE), "--to", "me@example.org",
                 "--to", "you@example.org")
    assert result.exit_code == 0, result.output
    assert [m.rcpt_tos for m in smtp_server.messages] == [["me@example.org"], ["you@example.org"]]
    assert parse(smtp_server.messages[0].data)["Subject"].startswith("[TEST] Smart zu wissen")


def test_bad_test_address_is_refused(smtp_project, smtp_server):
    result = run(smtp_project, "send", str(smtp_project.root / ISSUE), "--to", "me@example.org\nBcc: x")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert smtp_server.messages == []


def test_dry_run_default_directory(project):
    make_list(project, 3)
    result = run(project, "send", str(project.root / ISSUE), "--list", "news", "--dry-run")
    assert result.exit_code == 0, result.output
    # Outside dist/ (which `serve` publishes): the files hold addresses and working links.
    files = list((project.outbox_dir / "dry-run" / "2026-02").glob("*.eml"))
    assert len(files) == 3
    assert not list(project.dist_dir.rglob("*.eml"))
    assert str(project.outbox_dir / "dry-run" / "2026-02") in result.output.replace("\n", "")
    assert not (project.outbox_dir / "new").exists()
    assert "outbox/dry-run/<slug>/" in run(project, "send", "--help").output


def test_unknown_list_and_missing_target_are_clear_errors(project):
    result = run(project, "send", str(project.root / ISSUE), "--list", "nope", "--yes")
    assert result.exit_code == 1 and "no list named `nope`" in result.output
    result = run(project, "send", str(project.root / ISSUE))
    assert result.exit_code == 2 and "--to ADDR" in result.output
    result = run(project, "sends", "show", "42")
    assert result.exit_code == 1 and "no send with ID 42" in result.output


def test_show_lists_the_possibly_duplicated_in_flight_rows(project):
    store, _list_id, addresses = make_list(project, 3)
    assert run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes").exit_code == 0
    # What a crash leaves behind: a row still `sending`.
    with store.write() as conn:
        conn.execute(sa.update(deliveries).where(deliveries.c.email == addresses[1])
                     .values(status="sending"))
    shown = json.loads(run(project, "sends", "show", "1", "--json").stdout)
    assert shown["possibly_duplicated"] == [addresses[1]]
    resumed = run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
    assert resumed.exit_code == 0
    assert "in flight at the interruption" in resumed.output and addresses[1] in resumed.output
    shown = json.loads(run(project, "sends", "show", "1", "--json").stdout)
    assert shown["possibly_duplicated"] == [addresses[1]]
    row = next(d for d in shown["deliveries"] if d["email"] == addresses[1])
    assert row["status"] == "sent" and row["possibly_duplicated"] is True
    assert row["smtp_reply"].startswith("250")  # the reply itself, no marker text in it
    assert [d["email"] for d in shown["deliveries"] if d["possibly_duplicated"]] == [addresses[1]]
    # The flag is a column of its own, kept for good.
    with store.read() as conn:
        flagged = conn.execute(sa.select(deliveries.c.email)
                               .where(deliveries.c.possibly_duplicated)).scalars().all()
    assert flagged == [addresses[1]]
    (listed,) = json.loads(run(project, "sends", "ls", "--json").stdout)
    assert listed["possibly_duplicated"] == [addresses[1]] and listed["status"] == "finished"
    human = run(project, "sends", "ls")
    assert f"#1 possibly duplicated (in flight at an interruption): {addresses[1]}" in human.output


def test_resuming_a_paused_send_says_why_it_stopped(project):
    store, _list_id, _addresses = make_list(project, 3)
    assert run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes").exit_code == 0
    reason = "paused after 3 policy rejections in a row (last: 550 5.7.1 blocked)"
    with store.write() as conn:  # what a paused run leaves: the status and why
        conn.execute(sa.update(sends).values(status="paused", reason=reason, finished_at=None))
    shown = json.loads(run(project, "sends", "show", "1", "--json").stdout)
    assert (shown["status"], shown["reason"]) == ("paused", reason)
    assert f"Reason: {reason}" in run(project, "sends", "show", "1").output.splitlines()
    resumed = run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming send #1 (paused)" in resumed.output
    assert f"It stopped: {reason}" in resumed.output.splitlines()
    shown = json.loads(run(project, "sends", "show", "1", "--json").stdout)
    assert (shown["status"], shown["reason"]) == ("finished", None)


def test_rerun_of_a_finished_send_reaches_only_who_joined_since(project):
    store, list_id, _ = make_list(project, 2)
    assert run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes").exit_code == 0
    store.add_subscriber("late@example.org", list_id, confirmed=True)
    again = run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
    assert again.exit_code == 0, again.output
    assert ("Send #1 finished earlier (2 sent): 1 member(s) joined the list since and get it now; "
            "nobody gets it twice.") in again.output.splitlines()
    assert "Resuming" not in again.output
    assert len(list((project.outbox_dir / "new").iterdir())) == 3


def test_summary_names_no_connections_for_the_maildir_outbox(project):
    make_list(project, 1)
    result = run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
    transport = next(line for line in result.output.splitlines() if line.startswith("Transport:"))
    assert transport.endswith("(no SMTP host configured) — rate unlimited")
    assert "connection" not in transport


def test_smtp_summary_names_the_connections(smtp_project, smtp_server):
    make_list(smtp_project, 1)
    result = run(smtp_project, "send", str(smtp_project.root / ISSUE), "--list", "news", "--yes",
                 "--concurrency", "3")
    transport = next(line for line in result.output.splitlines() if line.startswith("Transport:"))
    assert "3 connection(s)" in transport


def test_warnings_are_printed_once(project):
    make_list(project, 1)
    issue = project.root / ISSUE
    issue.write_text("\n".join(line for line in issue.read_text(encoding="utf-8").splitlines()
                               if not line.startswith("preheader:")) + "\n", encoding="utf-8")
    for args in (["--yes"], ["--dry-run"]):
        result = run(project, "send", str(issue), "--list", "news", *args)
        assert result.exit_code == 0, result.output
        assert result.stderr.count("no `preheader`") == 1, result.stderr


def test_dry_run_lists_who_it_left_out_and_why(project):
    store, list_id, addresses = make_list(project, 3)
    store.unsubscribe(addresses[0], list_id)
    store.add_subscriber("pending@example.org", list_id)
    result = run(project, "send", str(project.root / ISSUE), "--list", "news", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Wrote 2 personalised message(s)" in result.output
    assert "Left out (not subscribed): 1 pending, 1 unsubscribed." in result.output.splitlines()
