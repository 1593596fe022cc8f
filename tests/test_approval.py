"""Approval (`newsletter approve`, `[delivery] require_approval`): a send to a list goes only with
the content someone approved; a one-character change of the issue, a template or newsletter.toml
is refused and named; test sends and dry runs never ask. `newsletter status` says where an issue
stands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_send_support import make_list
from typer.testing import CliRunner

from newsletter.audience.store import open_store
from newsletter.cli import app
from newsletter.delivery import approval
from newsletter.delivery.approval import NotApproved
from newsletter.project import Project, open_project

pytestmark = pytest.mark.backends

ISSUE = "issues/2026-02.yaml"
SUBJECT = "Smart zu wissen: Neue Wahlmodule"
runner = CliRunner()


def run(project: Project, *args: str):
    return runner.invoke(app, [*args, "--project", str(project.root)])


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.fixture
def strict(project: Project) -> Project:
    """The project with `[delivery] require_approval = true` and a list of three."""
    edit(project.root / "newsletter.toml", "[delivery]\n", "[delivery]\nrequire_approval = true\n")
    make_list(project, 3)[0].close()
    return open_project(project.root)


def send(project: Project):
    return run(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")


def outbox(project: Project) -> int:
    new = project.outbox_dir / "new"
    return len(list(new.iterdir())) if new.is_dir() else 0


def test_a_send_waits_for_the_approval_of_exactly_what_goes_out(strict: Project) -> None:
    issue = strict.root / ISSUE
    refused = send(strict)
    assert refused.exit_code == 1
    assert ("the issue `2026-02` has not been approved, and newsletter.toml requires it "
            "([delivery] require_approval = true); ask for approval: `newsletter approve "
            "issues/2026-02.yaml --by NAME`") in refused.output
    assert outbox(strict) == 0

    approved = run(strict, "approve", str(issue), "--by", "Anna Schmidt")
    assert approved.exit_code == 0, approved.output
    assert approved.output.startswith("Approved 2026-02 (") and " by Anna Schmidt at " in approved.output

    # One character of the issue: refused, and named.
    edit(issue, SUBJECT, SUBJECT.replace("Neue", "Neun"))
    refused = send(strict)
    assert refused.exit_code == 1
    assert "the issue `2026-02` changed since Anna Schmidt approved it (" in refused.output
    assert "Europe/Berlin): the issue file; ask for approval again: `newsletter approve " in refused.output
    edit(issue, SUBJECT.replace("Neue", "Neun"), SUBJECT)

    # One character of a template (a Jinja comment: the mail is the same, the template is not).
    override = strict.root / "templates" / "base.mjml.j2"
    override.write_text('{% extends "default:base.mjml.j2" %}{# Stand: A #}\n', encoding="utf-8")
    assert "the template templates/base.mjml.j2 (added)" in send(strict).output
    assert run(strict, "approve", str(issue), "--by", "Bert Berg").exit_code == 0
    edit(override, "Stand: A", "Stand: B")
    refused = send(strict)
    assert refused.exit_code == 1
    assert "changed since Bert Berg approved it (" in refused.output
    assert "Europe/Berlin): the template templates/base.mjml.j2; ask for approval again" in refused.output
    edit(override, "Stand: B", "Stand: A")

    # One character of newsletter.toml, in a setting that shapes the mail (the imprint).
    config = strict.root / "newsletter.toml"
    edit(config, "Stabsstelle", "Stabstelle")
    refused = send(strict)
    assert refused.exit_code == 1
    assert "Europe/Berlin): the settings [imprint] (newsletter.toml, or NEWSLETTER_IMPRINT__… in the " \
           "environment or .env); ask for approval again" in refused.output
    edit(config, "Stabstelle", "Stabsstelle")
    assert outbox(strict) == 0

    # Back to what Bert approved: a comment in the issue is not content; it goes.
    issue.write_text(issue.read_text(encoding="utf-8") + "# freigegeben\n", encoding="utf-8")
    sent = send(strict)
    assert sent.exit_code == 0, sent.output
    assert outbox(strict) == 3


def test_a_changed_local_image_asks_for_approval_again(strict: Project) -> None:
    from PIL import Image

    issue = strict.root / ISSUE
    photo = strict.root / "issues" / "bilder" / "turm.png"
    photo.parent.mkdir()
    Image.new("RGB", (40, 30), (0, 90, 160)).save(photo)
    edit(issue, "url: https://example.org/bilder/fernsehturm-zeituhr.jpg", "url: bilder/turm.png")
    assert run(strict, "approve", str(issue), "--by", "Anna").exit_code == 0
    Image.new("RGB", (40, 30), (0, 90, 161)).save(photo)  # one colour value in every pixel
    refused = send(strict)
    assert refused.exit_code == 1
    assert "the image bilder/turm.png" in " ".join(refused.output.split())
    assert outbox(strict) == 0


def test_several_changes_are_all_named(strict: Project) -> None:
    issue = strict.root / ISSUE
    assert run(strict, "approve", str(issue), "--by", "Anna").exit_code == 0
    edit(issue, SUBJECT, SUBJECT + "!")
    edit(strict.root / "newsletter.toml", 'primary_color = "#005f87"', 'primary_color = "#005f88"')
    with pytest.raises(NotApproved) as refused:
        open_project(strict.root).send(issue, "news")  # the library refuses too
    assert refused.value.message.endswith(
        "Europe/Berlin): the issue file; the settings [theme] (newsletter.toml, or NEWSLETTER_THEME__… in "
        "the environment or .env); ask for approval again: `newsletter approve "
        "issues/2026-02.yaml --by NAME`")


def test_test_sends_and_dry_runs_need_no_approval(strict: Project) -> None:
    issue = str(strict.root / ISSUE)
    test = run(strict, "send", issue, "--to", "ich@example.org")
    assert test.exit_code == 0, test.output
    assert "sent ich@example.org" in test.output
    dry = run(strict, "send", issue, "--list", "news", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Wrote 3 personalised message(s)" in dry.output


def test_latest_approval_counts_and_the_history_is_kept(strict: Project) -> None:
    issue = strict.root / ISSUE
    assert run(strict, "approve", str(issue), "--by", "Anna").exit_code == 0
    edit(issue, SUBJECT, SUBJECT + "?")
    assert run(strict, "approve", str(issue), "--by", "Bert").exit_code == 0
    assert run(strict, "approve", str(issue), "--by", "Bert").exit_code == 0  # twice is fine
    # Back to the version Anna approved: the latest approval (Bert's) is of other content.
    edit(issue, SUBJECT + "?", SUBJECT)
    refused = send(strict)
    assert refused.exit_code == 1 and "changed since Bert approved it" in refused.output
    with open_store(strict) as store:
        assert [a.by for a in approval.history(store, "2026-02")] == ["Anna", "Bert", "Bert"]
        first, second, _third = approval.history(store, "2026-02")
    assert first.fingerprint.changes(second.fingerprint) == ["the issue file"]
    assert first.fingerprint.templates == second.fingerprint.templates


def test_approver_name_is_checked(project: Project) -> None:
    issue = str(project.root / ISSUE)
    assert run(project, "approve", issue, "--by", "  ").output.strip() == (
        "--by: give the name of the person who approves")
    for hidden in ("A\x1bB", "\u202eAnna", "\u200b"):  # ESC, right-to-left override, zero-width space
        refused = run(project, "approve", issue, "--by", hidden)
        assert refused.exit_code == 1
        assert "must not contain control or invisible format characters" in refused.output
    ok = run(project, "approve", issue, "--by", "  Anna   Schmidt ", "--json")
    assert ok.exit_code == 0, ok.output
    shown = json.loads(ok.stdout)
    assert (shown["by"], shown["issue"], shown["issue_path"]) == ("Anna Schmidt", "2026-02", ISSUE)
    assert set(shown["hashes"]) == {"issue", "templates", "config", "content"}
    # Without require_approval the approval is recorded all the same, and says so.
    assert "does not require approval" in run(project, "approve", issue, "--by", "Anna").output


def test_status_draft_approved_changed_sent(strict: Project) -> None:
    issue = str(strict.root / ISSUE)

    def state() -> dict:
        result = run(strict, "status", issue, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert (state()["state"], state()["approval"]["state"]) == ("draft", "draft")
    human = run(strict, "status", issue).output
    assert "Approval:  none yet (required before a send)" in human and "State:     draft" in human
    run(strict, "approve", issue, "--by", "Anna Schmidt")
    shown = state()
    assert (shown["state"], shown["approval"]["approval"]["by"]) == ("approved", "Anna Schmidt")
    assert "Approval:  approved by Anna Schmidt at " in run(strict, "status", issue).output
    edit(Path(issue), SUBJECT, SUBJECT + "!")
    shown = state()
    assert (shown["state"], shown["approval"]["state"], shown["approval"]["changes"]) == (
        "draft", "changed", ["the issue file"])
    assert "Approval:  changed since Anna Schmidt approved it at " in run(strict, "status", issue).output
    edit(Path(issue), SUBJECT + "!", SUBJECT)
    assert send(strict).exit_code == 0
    shown = state()
    assert shown["state"] == "sent"
    assert [(s["list"], s["status"], s["counts"]["sent"]) for s in shown["sends"]] == [
        ("news", "finished", 3)]
    human = run(strict, "status", issue).output
    assert "Send #1 to news: sent " in human and ": 3 of 3 sent, 0 failed, 0 skipped" in human
    assert human.rstrip().endswith("State:     sent")
