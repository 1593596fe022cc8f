"""`newsletter init`, `newsletter new` and the help texts of the issue commands."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.validate import load_issue
from newsletter.project import open_project

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_init_creates_a_project_that_validates(tmp_path: Path, runner: CliRunner) -> None:
    target = tmp_path / "mein-newsletter"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    for name in ("newsletter.toml", "issues/2026-02.yaml", "issue.schema.json", "subscribers",
                 "templates", ".gitignore"):
        assert (target / name).exists(), name
    # The project's settings load, and its example issue validates without warnings.
    assert open_project(target).root == target.resolve()
    issues = sorted(str(p) for p in (target / "issues").glob("*.yaml"))
    result = runner.invoke(app, ["validate", "--strict", *issues])
    assert result.exit_code == 0, result.stderr
    # The modeline of the example finds the schema in the new project.
    first = (target / "issues" / "2026-02.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../issue.schema.json"


def test_init_refuses_to_overwrite_a_project(tmp_path: Path, runner: CliRunner) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text("# mine\n", encoding="utf-8")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{config} already exists; not overwriting it"
    assert config.read_text(encoding="utf-8") == "# mine\n"
    assert not (tmp_path / "issues").exists()  # nothing else was written either


def test_init_keeps_existing_files(tmp_path: Path, runner: CliRunner) -> None:
    (tmp_path / "issues").mkdir()
    mine = tmp_path / "issues" / "2026-02.yaml"
    mine.write_text("subject: meins\n", encoding="utf-8")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 0
    assert mine.read_text(encoding="utf-8") == "subject: meins\n"
    assert (tmp_path / "newsletter.toml").is_file()


def test_new_creates_an_issue_that_validates(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.invoke(app, ["init", str(tmp_path)])
    monkeypatch.chdir(tmp_path)  # `new` writes into ./issues by default
    result = runner.invoke(app, ["new", "--date", "2026-03-01"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "issues" / "2026-03.yaml"
    assert result.stdout.strip() == f"created {Path('issues') / '2026-03.yaml'}"
    loaded = load_issue(path, strict=True)
    assert loaded.issue.date == date(2026, 3, 1)
    assert loaded.issue.subject == "Newsletter März 2026"
    assert loaded.issue.slug == "2026-03"
    result = runner.invoke(app, ["validate", "--strict", "issues/2026-03.yaml"])
    assert result.exit_code == 0, result.stderr


def test_new_writes_into_the_projects_issues_from_a_subdirectory(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.invoke(app, ["init", str(tmp_path)])
    (tmp_path / "templates" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "templates" / "sub")
    result = runner.invoke(app, ["new", "--date", "2026-04-01"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "issues" / "2026-04.yaml").is_file()
    assert not (tmp_path / "templates" / "sub" / "issues").exists()


def test_new_outside_a_project_without_dir_says_so(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["new", "--date", "2026-04-01"])
    assert result.exit_code == 1
    assert "no newsletter.toml found" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_does_not_overwrite_an_issue_of_the_same_month(tmp_path: Path, runner: CliRunner) -> None:
    issues = tmp_path / "issues"
    assert runner.invoke(app, ["new", "--date", "2026-03-01", "--dir", str(issues)]).exit_code == 0
    (issues / "2026-03.yaml").write_text("# mine\n", encoding="utf-8")
    assert runner.invoke(app, ["new", "--date", "2026-03-15", "--dir", str(issues)]).exit_code == 0
    assert (issues / "2026-03.yaml").read_text(encoding="utf-8") == "# mine\n"
    assert load_issue(issues / "2026-03-2.yaml").issue.date == date(2026, 3, 15)


def test_new_rejects_a_bad_date(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["new", "--date", "2026-02-31", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == "--date: `2026-02-31` is not a valid date (no such day)"
    assert list(tmp_path.iterdir()) == []


def test_new_takes_the_german_date_format_issues_accept(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["new", "--date", "01.04.2026", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert load_issue(tmp_path / "2026-04.yaml").issue.date == date(2026, 4, 1)


def test_a_month_that_does_not_exist_is_named(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["new", "--date", "01.13.2026", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == "--date: `01.13.2026` is not a valid date (there is no month 13)"


@pytest.mark.parametrize("command", ["validate", "schema", "init", "new"])
def test_help_shows_an_example(command: str, runner: CliRunner) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert f"newsletter {command}" in result.stdout


def test_schema_command_as_a_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "newsletter", "schema"], capture_output=True,
                          text=True, check=False, cwd=REPO)
    assert proc.returncode == 0
    assert proc.stdout == (REPO / "issue.schema.json").read_text(encoding="utf-8")
