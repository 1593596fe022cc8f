"""`newsletter lists …` and `newsletter subscribers …` through the real CLI (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from newsletter.cli import app

pytestmark = pytest.mark.backends


@pytest.fixture
def run(project_dir: Path):
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, "--project", str(project_dir)])

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def test_quick_start_imports_the_example_and_lists_it(run, project_dir: Path) -> None:
    assert "created list news (Stadtnewsletter)" in ok(run("lists", "create", "news", "--title",
                                                           "Stadtnewsletter")).stdout
    example = project_dir / "subscribers" / "example.csv"
    out = ok(run("subscribers", "import", str(example), "--list", "news", "--confirmed")).stdout
    assert "5 new subscribers were added as subscribed" in out
    lists = json.loads(ok(run("lists", "ls", "--json")).stdout)
    assert [(entry["name"], entry["counts"]["subscribed"]) for entry in lists] == [("news", 5)]
    members = json.loads(ok(run("subscribers", "ls", "--list", "news", "--json")).stdout)
    assert {m["email"] for m in members} == {
        "anna.schmidt@example.org", "bernd.mueller@example.org", "claudia.weiss@example.org",
        "dilek.yilmaz@example.org", "erik.jansen@example.org"}
    assert "Claudia Weiß" in ok(run("subscribers", "ls")).stdout


def test_import_with_bad_rows_lists_them_and_exits_1(run, tmp_path: Path) -> None:
    ok(run("lists", "create", "news"))
    csv_file = tmp_path / "liste.csv"
    csv_file.write_bytes("E-Mail;Name\nok@example.org;Jörg\nkaputt;X\n".encode("cp1252"))
    dry = run("subscribers", "import", str(csv_file), "--list", "news", "--dry-run")
    assert dry.exit_code == 1
    assert f"{csv_file}:3: E-Mail: invalid e-mail address `kaputt`" in dry.stderr
    assert "dry run: nothing was changed" in dry.stdout
    assert json.loads(ok(run("subscribers", "ls", "--json")).stdout) == []

    real = run("subscribers", "import", str(csv_file), "--list", "news")
    assert real.exit_code == 1
    assert "1 row rejected; the other rows were imported" in real.stderr
    assert "Traceback" not in real.stdout + real.stderr
    shown = json.loads(ok(run("subscribers", "show", "ok@example.org", "--json")).stdout)
    assert shown["name"] == "Jörg"
    assert shown["lists"][0]["status"] == "pending"
    assert shown["history"][0]["source"] == "import"


def test_add_remove_show_and_forget(run, tmp_path: Path) -> None:
    ok(run("lists", "create", "news"))
    assert "is now subscribed on news" in ok(run("subscribers", "add", "Eva@Example.org", "--list",
                                                 "news", "--name", "Eva", "--confirmed")).stdout
    assert "already subscribed" in ok(run("subscribers", "add", "eva@example.org", "--list",
                                          "news")).stdout
    assert "unsubscribed eva@example.org from news" in ok(run("subscribers", "remove",
                                                             "eva@example.org")).stdout
    readd = run("subscribers", "add", "eva@example.org", "--list", "news", "--confirmed")
    assert readd.exit_code == 1 and "cannot re-activate" in readd.stderr
    shown = ok(run("subscribers", "show", "EVA@example.org")).stdout
    assert "Eva@example.org — Eva" in shown and "unsubscribed" in shown and "consent history" in shown

    assert "erased" in ok(run("subscribers", "remove", "eva@example.org", "--forget")).stdout
    gone = run("subscribers", "show", "eva@example.org")
    assert gone.exit_code == 1
    assert "no subscriber eva@example.org (the address is on the suppression list)" in gone.stderr
    csv_file = tmp_path / "again.csv"
    csv_file.write_text("email\neva@example.org\n", encoding="utf-8")
    again = ok(run("subscribers", "import", str(csv_file), "--list", "news", "--confirmed")).stdout
    assert "skipped: on the suppression list" in again


def test_export_writes_an_importable_file(run, tmp_path: Path) -> None:
    ok(run("lists", "create", "news"))
    ok(run("subscribers", "add", "a@example.org", "--list", "news", "--name", "Änne", "--confirmed"))
    out = tmp_path / "news.csv"
    ok(run("subscribers", "export", "--list", "news", "--out", str(out)))
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # BOM: Excel shows the umlauts
    assert data.decode("utf-8-sig").splitlines()[:2][0] == "email,name,status,created_at,updated_at"
    stdout = ok(run("subscribers", "export", "--list", "news")).stdout
    assert stdout.splitlines()[1].startswith("a@example.org,Änne,subscribed,")


@pytest.mark.parametrize(("args", "message"), [
    (("lists", "create", "news"), "list `news` already exists"),
    (("subscribers", "import", "missing.csv", "--list", "news"), "missing.csv: cannot read the file"),
    (("subscribers", "import", "x.csv", "--list", "nope"), "no list named `nope`; known lists: news"),
    (("subscribers", "add", "x@y", "--list", "news"), "invalid e-mail address `x@y`"),
    (("subscribers", "remove", "who@example.org"), "no subscriber with the address who@example.org"),
    (("subscribers", "show", "who@example.org"), "no subscriber who@example.org"),
    (("subscribers", "ls", "--list", "nope"), "no list named `nope`"),
])
def test_errors_exit_1_with_a_message_and_no_traceback(run, args: tuple[str, ...],
                                                       message: str) -> None:
    ok(run("lists", "create", "news"))
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_status_filter_is_checked(run) -> None:
    result = run("subscribers", "ls", "--status", "gone")
    assert result.exit_code == 2
    assert "pending" in result.stderr


def test_every_command_has_an_example_in_its_help(run) -> None:
    for args in (("lists", "create"), ("lists", "ls"), ("subscribers", "import"),
                 ("subscribers", "export"), ("subscribers", "add"), ("subscribers", "remove"),
                 ("subscribers", "ls"), ("subscribers", "show")):
        result = CliRunner().invoke(app, [*args, "--help"])
        assert result.exit_code == 0
        assert "Example: newsletter" in " ".join(result.stdout.split())


def test_lists_create_exist_ok_is_idempotent(project_dir) -> None:
    from typer.testing import CliRunner

    from newsletter.cli import app

    runner = CliRunner()
    args = ["lists", "create", "news", "--project", str(project_dir)]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    assert runner.invoke(app, [*args, "--exist-ok"]).exit_code == 0


def _mail(to: str, subject: str = "Ausgabe") -> bytes:
    return (f"From: Stadt <news@example.org>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\n\r\nHallo\r\n").encode()


def test_forget_deletes_local_copies_of_mails_to_the_address(run, project_dir: Path) -> None:
    """GDPR erasure also covers the project's own copies: the outbox/ Maildir and dry runs."""
    import mailbox

    ok(run("lists", "create", "news"))
    ok(run("subscribers", "add", "eva@example.org", "--list", "news", "--confirmed"))
    box = mailbox.Maildir(project_dir / "outbox", create=True)
    box.add(_mail("Eva <Eva@Example.org>"))
    box.add(_mail("eva@example.org", "Bitte bestätigen"))
    kept_key = box.add(_mail("Otto <otto@example.org>"))
    dry = project_dir / "outbox" / "dry-run" / "2026-02"
    dry.mkdir(parents=True)
    (dry / "000001-eva@example.org.eml").write_bytes(_mail("eva@example.org"))
    (dry / "000002-otto@example.org.eml").write_bytes(_mail("otto@example.org"))
    old_dry = project_dir / "dist" / "2026-02" / "dry-run"  # where older versions wrote dry runs
    old_dry.mkdir(parents=True)
    (old_dry / "000001-eva@example.org.eml").write_bytes(_mail("eva@example.org"))

    out = ok(run("subscribers", "remove", "eva@example.org", "--forget")).stdout
    assert "deleted 4 local copies of mails to the address" in out
    assert "mails already delivered and backups are not reached" in " ".join(out.split())
    assert [m["To"] for m in mailbox.Maildir(project_dir / "outbox", create=False)] == [
        "Otto <otto@example.org>"]
    assert kept_key in mailbox.Maildir(project_dir / "outbox", create=False)
    assert sorted(p.name for p in (project_dir / "outbox" / "dry-run").rglob("*.eml")) == [
        "000002-otto@example.org.eml"]
    assert not any(old_dry.iterdir())
    # Nothing left to delete the second time.
    assert "deleted 0 local copies" in ok(run("subscribers", "remove", "eva@example.org",
                                              "--forget")).stdout


def test_piped_listings_are_never_wrapped_or_cut(run) -> None:
    """`subscribers ls | cat`: every value whole on its row, whatever the terminal width was."""
    address = "stadtverwaltung.referat-digitalisierung." + "x" * 40 + "@example.org"
    name = "Referat für Digitalisierung, Smart City und Bürgerbeteiligung der Stadtverwaltung"
    ok(run("lists", "create", "news"))
    ok(run("subscribers", "add", address, "--list", "news", "--name", name, "--confirmed"))
    listing = ok(run("subscribers", "ls", "--list", "news")).stdout
    row = next(line for line in listing.splitlines() if address in line)
    assert name in row
    shown = ok(run("subscribers", "show", address)).stdout
    assert any(address in line for line in shown.splitlines())
