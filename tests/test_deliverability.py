"""What a spam filter says about the example issues as they are sent: SpamAssassin (Debian's
stock rules, no network tests) must score each message 0.0 or less."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import newsletter

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = ["2026-02.yaml", "2025-11-kongressberichte.yaml"]


def spamassassin_score(raw: bytes) -> tuple[float, str]:
    binary = shutil.which("spamassassin")
    assert binary, "spamassassin is not installed (scripts/bootstrap --system installs it)"
    report = subprocess.run([binary, "-L", "-t"], input=raw, capture_output=True, timeout=120).stdout
    text = report.decode("utf-8", "replace")
    found = re.search(r"Content analysis details:\s+\((-?[\d.]+) points", text)
    assert found, text[-2000:]
    return float(found.group(1)), text.split("Content analysis details:", 1)[1]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_issue_as_sent_scores_zero(project_dir: Path, example: str) -> None:
    shutil.copy(REPO / "issues" / example, project_dir / "issues" / example)
    with newsletter.open_project(project_dir) as project:
        project.import_subscribers(project_dir / "subscribers" / "example.csv", "example",
                                   confirmed=True, create_list=True)
        report = project.send(project_dir / "issues" / example, "example")
    assert report.status == "finished" and report.sent > 0
    message = next((project_dir / "outbox" / "new").iterdir())
    score, details = spamassassin_score(message.read_bytes())
    assert score <= 0.0, details
