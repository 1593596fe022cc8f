"""How long rendering one issue takes, against mjml-python alone.

Renders the example issue of `newsletter init` in-process (Jinja → MJML →
premailer for the email and the web version, the text part, .ics files) and,
alternating with it in the same loop, runs the reference: mjml-python alone
converting the issue's own MJML document (the one render_issue hands it).
Alternating the two keeps drifting machine load out of the ratio. Prints both
medians and their ratio (goal: at most 50x) in CPU time of this thread — on a
shared machine a 30 ms render is preempted far more often than a 1 ms one, so
wall-clock ratios rise with the load — and, for comparison, in wall-clock time;
then `newsletter build` as a subprocess (a cold process: imports and template
compilation included).

    .venv/bin/python bench/render.py [--runs 60]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import newsletter.render.html as html_module
from newsletter.content.validate import load_issue
from newsletter.project import open_project
from newsletter.render.html import render_issue

REPO = Path(__file__).resolve().parent.parent
GOAL = 50.0


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_and_wall(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    return statistics.median(seconds(fn) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(REPO / "newsletter" / "skeleton", root)  # what `newsletter init` creates
        project = open_project(root)
        issue_file = root / "issues" / "2026-02.yaml"
        loaded = load_issue(issue_file)

        # The first render compiles the templates; keep the MJML it converts as the reference input.
        seen: list[str] = []
        mjml2html = html_module.mjml2html
        html_module.mjml2html = lambda source: seen.append(source) or mjml2html(source)
        try:
            first = seconds(lambda: render_issue(loaded, project))
        finally:
            html_module.mjml2html = mjml2html
        mjml_source = seen[0]  # the email's (seen[1] is the web version's)
        rendered = render_issue(loaded, project)

        reference: list[tuple[float, float]] = []
        in_process: list[tuple[float, float]] = []
        for _ in range(args.runs):  # alternating, so both see the same machine load
            reference.append(cpu_and_wall(lambda: mjml2html(mjml_source)))
            in_process.append(cpu_and_wall(lambda: render_issue(loaded, project)))
        ref_cpu, ref_wall = (statistics.median(t) for t in zip(*reference, strict=True))
        render_cpu, render_wall = (statistics.median(t) for t in zip(*in_process, strict=True))

        newsletter = shutil.which("newsletter", path=str(Path(sys.executable).parent)) or "newsletter"
        cli_runs = max(3, args.runs // 20)
        cli = median_seconds(lambda: subprocess.run(
            [newsletter, "build", str(issue_file), "--out", str(Path(tmp) / "dist")],
            cwd=root, check=True, capture_output=True), cli_runs)
        startup = median_seconds(lambda: subprocess.run(
            [newsletter, "--help"], cwd=root, check=True, capture_output=True), cli_runs)

    size = len(rendered.html.encode("utf-8"))
    ratio = render_cpu / ref_cpu
    print(f"example issue: {size / 1000:.1f} KB email HTML, {len(mjml_source) / 1000:.1f} KB MJML")
    print(f"medians of {args.runs} alternating runs        CPU time    wall clock")
    print(f"reference: mjml2html of that MJML      {ref_cpu * 1e3:8.2f} ms  {ref_wall * 1e3:8.2f} ms")
    print(f"render_issue in-process                {render_cpu * 1e3:8.2f} ms  {render_wall * 1e3:8.2f} ms")
    print(f"RATIO render_issue / mjml-python: {ratio:.1f}x CPU time "
          f"({'within' if ratio <= GOAL else 'OVER'} the goal of {GOAL:.0f}x); "
          f"{render_wall / ref_wall:.1f}x wall clock")
    print(f"first render_issue in this process (compiles templates): {first * 1000:8.1f} ms")
    print(f"`newsletter build` subprocess, median of {cli_runs}:       {cli * 1000:8.1f} ms")
    print(f"  of which `newsletter --help` start-up alone:          {startup * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
