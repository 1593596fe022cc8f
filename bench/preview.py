"""Benchmark `newsletter preview`: from saving the issue file to the new headline in the browser.

Runs the real preview server on 127.0.0.1 and real headless Chromium, saves the example
issue 10 times with a changed headline, and measures until the open page shows it
(median of 10). Reference, measured in the same run: rendering the issue in-process
alone (load + render + check + headers, what every save costs at the least), so the
ratio is the overhead of watching, pushing and swapping the page.

    .venv/bin/python bench/preview.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Route, sync_playwright

# Benchmark the working tree, whatever the virtualenv's install of the package points to.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from newsletter.project import open_project
from newsletter.scaffold import init_project
from newsletter.web.preview import create_preview_app, serve_in_background
from newsletter.web.preview_snapshot import build_snapshot

HEADLINE = "Jetzt anmelden zum 8. MPSC-Kongress in Berlin"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOWN = """([text]) => {
  const doc = document.getElementById("email").contentDocument;
  return !!doc && [...doc.querySelectorAll("h1, h2, h3")].some((h) => h.textContent.trim() === text);
}"""


def _local_only(route: Route) -> None:
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        init_project(root)
        issue = root / "issues" / "2026-02.yaml"
        original = issue.read_text(encoding="utf-8")

        build_snapshot(root, issue)  # warm caches (imports, Jinja, babel) like the server's first render
        render_ms = []
        for _ in range(runs):
            started = time.perf_counter()
            snapshot = build_snapshot(root, issue)
            render_ms.append((time.perf_counter() - started) * 1000)
            assert snapshot.ok, snapshot.errors

        project = open_project(root)
        save_to_visible_ms = []
        with serve_in_background(create_preview_app(project, issue)) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", _local_only)
            page.goto(url)
            page.wait_for_function(SHOWN, arg=[HEADLINE], timeout=30_000)
            page.wait_for_timeout(500)  # let the event stream settle
            for run in range(runs):
                headline = f"Kongress verschoben – Fassung {run + 1}"
                started = time.perf_counter()
                issue.write_text(original.replace(HEADLINE, headline), encoding="utf-8")
                page.wait_for_function(SHOWN, arg=[headline], polling=5, timeout=30_000)
                save_to_visible_ms.append((time.perf_counter() - started) * 1000)
                page.wait_for_timeout(300)  # separate the saves, as typing pauses would
            browser.close()

    latency = statistics.median(save_to_visible_ms)
    reference = statistics.median(render_ms)
    print(f"runs: {runs}")
    print(f"save → new headline visible in Chromium: median {latency:.0f} ms "
          f"(min {min(save_to_visible_ms):.0f}, max {max(save_to_visible_ms):.0f})")
    print(f"reference, in-process render (load + render + check + headers): median {reference:.0f} ms")
    print(f"ratio save-to-visible / render alone: {latency / reference:.2f}")
    print(f"overhead (watch + push + swap): {latency - reference:.0f} ms; goal: save-to-visible < 1000 ms "
          f"→ {'met' if latency < 1000 else 'NOT met'}")


if __name__ == "__main__":
    main()
