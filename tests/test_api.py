"""The library API: the README's "Python API" example runs as written, and the API finds
projects by the same rule as the commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import newsletter
from newsletter.errors import IssueInvalid, ProjectNotFound
from newsletter.project import locate_project

pytestmark = pytest.mark.backends

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _api_example() -> str:
    section = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Python API section has no python example"
    return blocks[0]


def test_readme_python_api_example_runs_as_written(project_dir: Path) -> None:
    # Only the database the test runs on (PostgreSQL: the URL in the environment) comes along.
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("NEWSLETTER_") or k == "NEWSLETTER_DATABASE__URL"}
    result = subprocess.run([sys.executable, "-c", _api_example()], cwd=project_dir, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    members = len((project_dir / "subscribers" / "example.csv").read_text().strip().splitlines()) - 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("built ") and line.endswith("dist/2026-02") for line in lines), lines
    assert "0 errors," in result.stdout
    assert f"{members} added, 0 rows with problems" in result.stdout
    assert f"finished {members} sent" in result.stdout
    # The send went into the local Maildir: one message per subscriber.
    assert len(list((project_dir / "outbox" / "new").iterdir())) == members
    # Running it again resumes the finished send: nobody gets the issue twice.
    again = subprocess.run([sys.executable, "-c", _api_example()], cwd=project_dir, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"finished {members} sent" in again.stdout  # the sent count of the send, not new mails
    assert len(list((project_dir / "outbox" / "new").iterdir())) == members


def test_invalid_issue_raises_with_every_problem(project_dir: Path) -> None:
    bad = project_dir / "issues" / "bad.yaml"
    bad.write_text("subject: Hallo\ndate: 2026-13-01\nsections: []\nbogus: 1\n", encoding="utf-8")
    with newsletter.open_project(project_dir) as project, pytest.raises(IssueInvalid) as raised:
        project.issue(bad)
    lines = raised.value.lines()
    assert any(":2:" in line and "date" in line for line in lines), lines
    assert any(":4:" in line and "bogus" in line for line in lines), lines


def test_issue_file_belongs_to_its_own_project(project_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    issue = project_dir / "issues" / "2026-02.yaml"
    assert locate_project(near=issue) == project_dir.resolve()
    with pytest.raises(ProjectNotFound):
        locate_project()
    # --project (here: the environment variable the option reads) wins over the file's project.
    monkeypatch.setenv("NEWSLETTER_PROJECT", str(project_dir / "issues"))
    assert locate_project(near=elsewhere) == project_dir.resolve()


def test_store_opens_lazily_and_closes_with_the_project(project_dir: Path) -> None:
    project = newsletter.open_project(project_dir)
    assert "store" not in vars(project)
    with project:
        assert project.store.lists() == []
    assert "store" not in vars(project)
