"""How long the command line takes to start, against the libraries it cannot do without.

Reference measured in the same run: `python -c "import pydantic, yaml, typer, markdown_it,
email_validator"` (the imports `validate` needs anyway). Prints the median of `--runs` runs of
each command and its ratio to the reference; goals: `newsletter --help` <= 1.5x,
`newsletter validate issues/2026-02.yaml` <= 1.6x. `build` is shown for information.

    .venv/bin/python bench/startup.py [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REFERENCE = [sys.executable, "-c", "import pydantic, yaml, typer, markdown_it, email_validator"]
COMMANDS = {
    "newsletter --help": ([str(BIN / "newsletter"), "--help"], 1.5),
    "newsletter validate issues/2026-02.yaml": ([str(BIN / "newsletter"), "validate",
                                                 "issues/2026-02.yaml"], 1.6),
    "newsletter build issues/2026-02.yaml": ([str(BIN / "newsletter"), "build", "issues/2026-02.yaml",
                                              "--out", "/tmp/newsletter-bench-startup"], None),
}


def once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    commands = {"reference (imports)": (REFERENCE, None), **COMMANDS}
    for command, _goal in commands.values():
        once(command)  # warm the file cache and .pyc files
    # Interleaved rounds: a load spike on the shared cores hits every command alike.
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (command, _goal) in commands.items():
            times[name].append(once(command))
    reference = statistics.median(times["reference (imports)"])
    print(f"median of {args.runs} runs each")
    failed = False
    for name, (_command, goal) in commands.items():
        median = statistics.median(times[name])
        ratio = median / reference
        verdict = ""
        if goal is not None:
            verdict = f"  goal <= {goal}x: " + ("ok" if ratio <= goal else "MISSED")
            failed |= ratio > goal
        print(f"{name:42s} {median * 1000:7.0f} ms  {ratio:5.2f}x{verdict}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
