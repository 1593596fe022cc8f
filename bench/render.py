"""How long rendering one issue takes.

Prints the median time to render the example issue in-process (Jinja → MJML →
premailer, text part, web version, .ics) over many runs, the time of
`newsletter build issues/2026-02.yaml` as a subprocess (the README's example,
including Python start-up), and ratios against a reference measured in the same
run: mjml-python alone converting the issue's own MJML document. (Most of a
render is premailer inlining the CSS, done twice: email and web version.)

    .venv/bin/python bench/render.py [--runs 30]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mjml import mjml2html

from newsletter.config import load_project
from newsletter.content.validate import load_issue
from newsletter.render.html import environment, render_issue

REPO = Path(__file__).resolve().parent.parent


def median_seconds(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(REPO / "newsletter" / "skeleton", root)  # what `newsletter init` creates
        project = load_project(root)
        issue_file = root / "issues" / "2026-02.yaml"
        loaded = load_issue(issue_file)
        rendered = render_issue(loaded, project)  # warm-up (imports, template compilation)

        # Reference: mjml-python alone on the MJML document this issue produces.
        env = environment(project)
        mjml_source = env.get_template("base.mjml.j2").render(
            issue=loaded.issue, subject=loaded.issue.subject, preheader=loaded.issue.preheader,
            lang="de", newsletter=project.settings.newsletter, imprint=project.settings.imprint,
            theme=project.settings.theme, web=False, web_url=rendered.web_url,
            archive_url=rendered.archive_url, subscribe_url="", unsubscribe_url="x",
            ics_url=lambda event: None)
        reference = median_seconds(lambda: mjml2html(mjml_source), args.runs)
        in_process = median_seconds(lambda: render_issue(loaded, project), args.runs)

        newsletter = shutil.which("newsletter", path=str(Path(sys.executable).parent)) or "newsletter"
        cli_runs = max(3, args.runs // 10)
        cli = median_seconds(lambda: subprocess.run(
            [newsletter, "build", str(issue_file), "--out", str(Path(tmp) / "dist")],
            cwd=root, check=True, capture_output=True), cli_runs)
        startup = median_seconds(lambda: subprocess.run(
            [newsletter, "--help"], cwd=root, check=True, capture_output=True), cli_runs)

    size = len(rendered.html.encode("utf-8"))
    print(f"example issue: {size / 1000:.1f} KB email HTML, {len(mjml_source) / 1000:.1f} KB MJML")
    print(f"reference  mjml2html of that MJML (median of {args.runs}): {reference * 1000:8.1f} ms")
    print(f"render_issue in-process (median of {args.runs}):        {in_process * 1000:8.1f} ms"
          f"  = {in_process / reference:.1f}x reference")
    print(f"`newsletter build` subprocess (median of {cli_runs}):       {cli * 1000:8.1f} ms"
          f"  = {cli / reference:.1f}x reference")
    print(f"  of which `newsletter --help` start-up alone:           {startup * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
