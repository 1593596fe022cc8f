"""The layout promises of docs/architecture.md: light start-up, no module over 500 lines,
no import upwards."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"
HEAVY = ("sqlalchemy", "premailer", "mjml", "starlette", "aiosmtplib", "uvicorn", "lxml")


@pytest.mark.parametrize("argv", [["--help"], ["validate", "issues/2026-02.yaml"], ["schema"]])
def test_light_commands_do_not_load_the_heavy_parts(argv: list[str]) -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['newsletter', *{argv!r}]\n"
        "from newsletter.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_no_module_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}


# Lower layers never import higher ones (docs/architecture.md).
LAYERS = dict(content=1, render=2, audience=2, editorial=2, delivery=3, feedback=4, web=5, cli=6)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("newsletter."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("newsletter.")}
    return found


def test_packages_import_only_downwards() -> None:
    wrong = []
    for package, level in LAYERS.items():
        for path in (PACKAGE / package).rglob("*.py"):
            for target in _imports(path):
                if LAYERS.get(target, 0) > level or (target != package and LAYERS.get(target) == level):
                    wrong.append(f"{path.relative_to(PACKAGE)} imports newsletter.{target}")
    assert wrong == []
