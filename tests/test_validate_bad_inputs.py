"""Bad issue files: each must be reported as FILE:LINE:COL: field.path: message.

Every case runs through the real CLI (typer's CliRunner, stderr kept apart) and
asserts the exact lines printed, exit status 1 and that no traceback appears. A
few run as a subprocess (`python -m newsletter validate`), as an editor would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.validate import load_issue
from newsletter.errors import IssueInvalid

REPO = Path(__file__).resolve().parent.parent

# A valid issue the cases below start from (line numbers matter: keep it short).
HEAD = """\
subject: Test
preheader: Vorschau
date: 2026-02-10
sections:
"""


def issue(sections: str, head: str = HEAD) -> str:
    """HEAD plus the given section list, indented under `sections:` (items at column 3)."""
    return head + textwrap.indent(textwrap.dedent(sections), "  ")


def event(lines: str) -> str:
    """An events section whose first event starts on line 8 (its keys at column 9)."""
    return issue(
        """\
          - kind: events
            heading: Termine
            events:
        """
    ) + textwrap.indent(textwrap.dedent(lines), "      ")


def image(lines: str) -> str:
    """An article whose `image:` mapping starts on line 8 (its keys at column 7)."""
    return issue(
        """\
          - kind: article
            heading: Bericht
            image:
        """
    ) + textwrap.indent(textwrap.dedent(lines), "      ")


def body(text: str) -> str:
    """A text section whose literal `body: |` starts on line 7; its text on line 8."""
    return issue(
        """\
          - kind: text
            heading: Hallo
            body: |
        """
    ) + textwrap.indent(textwrap.dedent(text), "      ")


CASES: dict[str, tuple[str | bytes, list[str]]] = {
    # ------------------------------------------------------------------ YAML syntax
    "bad indentation": (
        issue("""\
          - kind: text
            heading: Hallo
             body: Text
        """),
        ["F:7:10: YAML syntax error: unexpected `:` here; check this line's indentation, "
         "or put text that contains `: ` in quotes"],
    ),
    "dedented key": (
        "subject: Test\n  date: 2026-02-10\nsections: []\n",
        ["F:2:7: YAML syntax error: unexpected `:` here; check this line's indentation, "
         "or put text that contains `: ` in quotes"],
    ),
    "tab indentation": (
        "subject: Test\n\tdate: 2026-02-10\n",
        ["F:2:1: YAML syntax error: a tab character here; indent with spaces, not tabs"],
    ),
    "unclosed quote": (
        'subject: Test\npreheader: "Vorschau\ndate: 2026-02-10\nsections: []\n',
        ["F:2:12: YAML syntax error: the quote opened here is never closed; add the closing quote"],
    ),
    "duplicate key": (
        "subject: Test\ndate: 2026-02-10\nsubject: Noch einmal\nsections: []\n",
        ["F:3:1: subject: duplicate key `subject` (first given on line 1)"],
    ),
    "empty file": (
        "",
        ["F:1:1: the file is empty; an issue needs at least `subject`, `date` and `sections`"],
    ),
    "only comments": (
        "# yaml-language-server: $schema=../issue.schema.json\n# TODO\n",
        ["F:1:1: the file is empty; an issue needs at least `subject`, `date` and `sections`"],
    ),
    "a list instead of an issue": (
        "- subject: Test\n- date: 2026-02-10\n",
        ["F:1:1: an issue must be a mapping of keys (`subject:`, `date:`, `sections:` …), "
         "not a list or text"],
    ),
    "second YAML document": (
        issue("""\
          - kind: text
            heading: Hallo
            body: Text
        """) + "---\nsubject: Zweite Ausgabe\n",
        ["F:9:1: more than one YAML document (`---`); put one issue per file"],
    ),
    "not UTF-8": (
        "subject: Grüße\ndate: 2026-02-10\n".encode("latin-1"),
        ["F:1:12: the file is not UTF-8 encoded (byte 0xfc here); save it as UTF-8"],
    ),
    # ------------------------------------------------------------------ shape
    "list where a mapping belongs": (
        image("""\
          - url: https://example.org/bild.jpg
            alt: Ein Bild
        """),
        ["F:8:7: sections[0].image: expected a mapping of keys here (`key: value`), not a list"],
    ),
    "mapping where a list belongs": (
        "subject: Test\npreheader: Vorschau\ndate: 2026-02-10\nsections:\n"
        "  kind: text\n  heading: Hallo\n  body: Text\n",
        ["F:5:3: sections: expected a list here (lines starting with `- `), not a mapping"],
    ),
    "empty sections": (
        "subject: Test\npreheader: Vorschau\ndate: 2026-02-10\nsections: []\n",
        ["F:4:11: sections: the list must not be empty"],
    ),
    "text where a mapping of text belongs": (
        "subject:\n  de: Test\npreheader: Vorschau\ndate: 2026-02-10\nsections:\n"
        "  - kind: text\n    heading: Hallo\n    body: Text\n",
        ["F:2:3: subject: expected text here, not a mapping"],
    ),
    # ------------------------------------------------------------------ keys
    "unknown key titel": (
        event("""\
          - titel: Kongress
            date: 2026-04-28
        """),
        ["F:8:9: sections[0].events[0].titel: unknown key `titel`, did you mean `title`?"],
    ),
    "unknown key headlin": (
        issue("""\
          - kind: digest
            heading: Smart zu wissen
            items:
              - headlin: Neue Wahlmodule
                body: Text
        """),
        ["F:8:9: sections[0].items[0].headlin: unknown key `headlin`, did you mean `headline`?"],
    ),
    "unknown top-level key title": (
        "title: Test\npreheader: Vorschau\ndate: 2026-02-10\nsections:\n"
        "  - kind: text\n    heading: Hallo\n    body: Text\n",
        ["F:1:1: title: unknown key `title`, did you mean `subject`?"],
    ),
    "unknown key without a close match": (
        issue("""\
          - kind: article
            heading: Bericht
            blocks:
              - text: Hallo
                farbe: rot
        """),
        ["F:9:9: sections[0].blocks[0].farbe: unknown key `farbe`; the keys allowed here are `text`"],
    ),
    "unknown section kind": (
        issue("""\
          - kind: digets
            heading: Smart zu wissen
        """),
        ["F:5:11: sections[0].kind: unknown section kind `digets`, did you mean `digest`?"],
    ),
    "missing kind": (
        issue("""\
          - heading: Smart zu wissen
            items: []
        """),
        ["F:5:5: sections[0]: missing `kind`: one of digest, events, links, news, article, text"],
    ),
    "block without a known key": (
        issue("""\
          - kind: article
            heading: Bericht
            blocks:
              - zitat: Hallo
        """),
        ["F:8:9: sections[0].blocks[0]: a block needs one of the keys `text`, `heading`, "
         "`quote` or `image`"],
    ),
    "missing required keys": (
        event("""\
          - venue: Smart Village Berlin
        """),
        ["F:8:9: sections[0].events[0].title: missing required key `title`",
         "F:8:9: sections[0].events[0].date: missing required key `date`"],
    ),
    "missing subject": (
        "# yaml-language-server: $schema=../issue.schema.json\n"
        "preheader: Vorschau\ndate: 2026-02-10\nsections:\n"
        "  - kind: text\n    heading: Hallo\n    body: Text\n",
        ["F:2:1: subject: missing required key `subject`"],
    ),
    "item with neither headline nor body": (
        issue("""\
          - kind: digest
            heading: Smart zu wissen
            items:
              - links:
                  - label: Mehr
                    url: https://example.org/
        """),
        ["F:8:9: sections[0].items[0]: an item needs a `headline` or a `body`"],
    ),
    # ------------------------------------------------------------------ values
    "impossible ISO date": (
        event("""\
          - title: Kongress
            date: 2026-02-31
        """),
        ["F:9:15: sections[0].events[0].date: `2026-02-31` is not a valid date (no such day)"],
    ),
    "impossible German date": (
        event("""\
          - title: Kongress
            date: 31.02.2026
        """),
        ["F:9:15: sections[0].events[0].date: `31.02.2026` is not a valid date (no such day)"],
    ),
    "date in words": (
        "subject: Test\npreheader: Vorschau\ndate: 10. Februar 2026\nsections:\n"
        "  - kind: text\n    heading: Hallo\n    body: Text\n",
        ["F:3:7: date: `10. Februar 2026` is not a date; write it as 2026-02-10 or 10.02.2026"],
    ),
    "end date before start": (
        event("""\
          - title: Kongress
            date: 2026-04-28
            end: 2026-04-27
        """),
        ["F:10:14: sections[0].events[0].end: the event ends (27.04.2026) before it starts "
         "(28.04.2026)"],
    ),
    "end_time before time": (
        event("""\
          - title: Kongress
            date: 2026-04-28
            time: 18:00
            end_time: 9:30
        """),
        ["F:11:19: sections[0].events[0].end_time: the event ends (09:30) before it starts (18:00)"],
    ),
    "impossible time": (
        event("""\
          - title: Kongress
            date: 2026-04-28
            time: 25:00
        """),
        ["F:10:15: sections[0].events[0].time: `25:00` is not a valid time of day"],
    ),
    "relative URL": (
        event("""\
          - title: Kongress
            date: 2026-04-28
            register:
              url: /anmeldung
        """),
        ["F:11:16: sections[0].events[0].register.url: `/anmeldung` is not an absolute http(s) URL "
         "(it must start with https://)"],
    ),
    "ftp URL": (
        image("""\
          url: ftp://example.org/bild.jpg
          alt: Der Fernsehturm
        """),
        ["F:8:12: sections[0].image.url: `ftp://example.org/bild.jpg` is not an absolute http(s) URL "
         "(it must start with https://)"],
    ),
    "URL with spaces": (
        image("""\
          url: https://example.org/mein bild.jpg
          alt: Der Fernsehturm
        """),
        ["F:8:12: sections[0].image.url: `https://example.org/mein bild.jpg` contains spaces; "
         "encode them as %20"],
    ),
    "alt text is a file name": (
        image("""\
          url: https://example.org/bild.jpg
          alt: 54944851627_89f2bd37ce_b.jpg
        """),
        ["F:9:12: sections[0].image.alt: alt text `54944851627_89f2bd37ce_b.jpg` is a file name; "
         "describe what the image shows"],
    ),
    "empty alt text": (
        image("""\
          url: https://example.org/bild.jpg
          alt: ""
        """),
        ["F:9:12: sections[0].image.alt: must not be empty"],
    ),
    "missing alt text": (
        image("""\
          url: https://example.org/bild.jpg
          credit: ©Stadt Jena
        """),
        ["F:8:7: sections[0].image.alt: missing required key `alt`"],
    ),
    "width without height": (
        image("""\
          url: https://example.org/bild.jpg
          alt: Der Fernsehturm
          width: 1200
        """),
        ["F:10:14: sections[0].image.width: give both `width` and `height` of the image, or neither "
         "(`height` is missing)"],
    ),
    "width that is not a number": (
        image("""\
          url: https://example.org/bild.jpg
          alt: Der Fernsehturm
          width: breit
          height: 800
        """),
        ["F:10:14: sections[0].image.width: expected a whole number here, not the text `breit`"],
    ),
    "bad slug": (
        "subject: Test\npreheader: Vorschau\ndate: 2026-02-10\nslug: Februar 2026\nsections:\n"
        "  - kind: text\n    heading: Hallo\n    body: Text\n",
        ["F:4:7: slug: `Februar 2026` is not a valid slug; use lower-case letters, digits and "
         "dashes only, e.g. `2026-02`"],
    ),
    # ------------------------------------------------------------------ Markdown
    "Markdown heading in a body": (
        body("""\
          Erster Absatz.

          ## Zwischenüberschrift
        """),
        ["F:10:7: sections[0].body: headings (#) cannot be used here (use paragraphs, **bold**, "
         "*italics*, [links](https://…) and bullet lists)"],
    ),
    "raw HTML in a body": (
        body("""\
          Ein <b>fetter</b> Satz.
        """),
        ["F:8:7: sections[0].body: raw HTML cannot be used here (use paragraphs, **bold**, "
         "*italics*, [links](https://…) and bullet lists)"],
    ),
    "Markdown link with a relative target": (
        body("""\
          Erster Satz,
          zweiter Satz mit [Link](/programm).
        """),
        ["F:9:7: sections[0].body: link target `/programm` must be an absolute http(s) URL "
         "(https://…) or a mailto: address"],
    ),
    # ------------------------------------------------------------------ many at once
    "several problems, reported in line order": (
        "subject: Test\npreheader: Vorschau\ndate: 2026-02-30\nsections:\n"
        "  - kind: events\n    heading: Termine\n    events:\n"
        "      - title: Kongress\n        date: 2026-04-28\n        end: 2026-04-27\n"
        "      - titel: Workshop\n        date: 2026-05-01\n"
        "  - kind: links\n    heading: Blog\n    links:\n"
        "      - title: Beitrag\n        url: example.org/blog\n",
        ["F:3:7: date: `2026-02-30` is not a valid date (no such day)",
         "F:10:14: sections[0].events[0].end: the event ends (27.04.2026) before it starts "
         "(28.04.2026)",
         "F:11:9: sections[0].events[1].titel: unknown key `titel`, did you mean `title`?",
         "F:17:14: sections[1].links[0].url: `example.org/blog` is not an absolute http(s) URL "
         "(it must start with https://)"],
    ),
}


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_reported_exactly(name: str, tmp_path: Path, runner: CliRunner) -> None:
    content, expected = CASES[name]
    path = tmp_path / "issue.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stdout + result.stderr
    # Warnings are shown beside the errors (tested below); these cases are about the errors.
    errors = [line for line in result.stderr.splitlines() if ": warning: " not in line]
    assert errors == [line.replace("F:", f"{path}:", 1) for line in expected]
    assert result.stdout == ""


def test_enough_distinct_bad_inputs() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    "name", ["bad indentation", "unknown key titel", "not UTF-8", "several problems, reported in line order"]
)
def test_bad_input_through_a_real_process(name: str, tmp_path: Path) -> None:
    content, expected = CASES[name]
    path = tmp_path / "issue.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", "validate", str(path)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [line.replace("F:", f"{path}:", 1) for line in expected]


# --- hardening: aliases and header injection ---------------------------------------------------


def test_yaml_alias_bomb_is_refused_fast_with_its_position(tmp_path: Path) -> None:
    """Nine levels of aliases would expand to 9**9 strings; they are refused before that."""
    lines = ["subject: Hallo", "date: 2026-02-10", 'a: &a ["x","x","x","x","x","x","x","x","x"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    lines.append(f"sections: *{prev}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(IssueInvalid) as raised:
        load_issue(path)
    (line,) = raised.value.lines()
    assert line.startswith(f"{path}:3:4:") and "anchors and aliases" in line


@pytest.mark.parametrize(("field", "value", "named"), [
    ("subject", '"Hallo\\r\\nBcc: x@example.org"', "U+000D (carriage return)"),
    ("subject", '"Hallo\\u2028Welt"', "U+2028 (line separator)"),
    ("preheader", '"Vorschau\\x85mehr"', "U+0085 (next line (NEL))"),
])
def test_header_fields_with_line_breaks_are_errors_with_position(tmp_path: Path, field: str, value: str,
                                                                named: str) -> None:
    path = tmp_path / "inject.yaml"
    other = "preheader: Kurz" if field == "subject" else "subject: Hallo"
    path.write_text(f"{field}: {value}\n{other}\ndate: 2026-02-10\nsections:\n"
                    "  - kind: text\n    heading: Hallo\n    body: Text\n", encoding="utf-8")
    with pytest.raises(IssueInvalid) as raised:
        load_issue(path)
    (line,) = raised.value.lines()
    assert line.startswith(f"{path}:1:{len(field) + 3}: {field}: contains {named}"), line


def test_warnings_are_shown_while_the_file_has_errors(tmp_path: Path, runner: CliRunner) -> None:
    path = tmp_path / "issue.yaml"
    path.write_text(textwrap.dedent("""\
        subject: Hallo
        date: 2026-02-31
        sections:
          - kind: text
            heading: Hallo
            body: Text
        """), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}:1:10: warning: subject: no `preheader`: mail clients will show the first text of "
        "the email as the preview line instead",
        f"{path}:2:7: date: `2026-02-31` is not a valid date (no such day)",
    ]


def test_cross_field_check_runs_while_another_field_of_the_object_is_wrong(tmp_path: Path,
                                                                          runner: CliRunner) -> None:
    path = tmp_path / "issue.yaml"
    path.write_text(textwrap.dedent("""\
        subject: Hallo
        preheader: Kurz
        date: 2026-02-10
        sections:
          - kind: events
            heading: Termine
            events:
              - title: Kongress
                date: 2026-04-28
                time: "17:00"
                end_time: "09:30"
                venue: ""
        """), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}:11:19: sections[0].events[0].end_time: the event ends (09:30) before it starts (17:00)",
        f"{path}:12:16: sections[0].events[0].venue: must not be empty",
    ]
