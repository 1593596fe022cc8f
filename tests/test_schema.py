"""`newsletter schema`: valid JSON Schema, and the committed copies are up to date."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.model import SECTION_KINDS

REPO = Path(__file__).resolve().parent.parent
# The example issues' modeline `# yaml-language-server: $schema=../issue.schema.json`
# points at the first; `newsletter init` copies the second into new projects.
SCHEMA_COPIES = [REPO / "issue.schema.json", REPO / "newsletter" / "skeleton" / "issue.schema.json"]


def printed_schema() -> str:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_schema_is_json_schema_of_the_issue() -> None:
    schema = json.loads(printed_schema())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False  # unknown keys get flagged in the editor
    assert set(schema["required"]) == {"subject", "date", "sections"}
    assert {"subject", "preheader", "date", "slug", "intro", "outro", "sections"} <= set(
        schema["properties"])


def test_sections_items_are_the_section_kinds() -> None:
    schema = json.loads(printed_schema())
    items = schema["properties"]["sections"]["items"]
    assert items["discriminator"]["propertyName"] == "kind"
    assert set(items["discriminator"]["mapping"]) == set(SECTION_KINDS)
    kinds = set()
    for ref in items["oneOf"]:
        definition = schema["$defs"][ref["$ref"].rsplit("/", 1)[1]]
        assert definition["additionalProperties"] is False
        kinds.add(definition["properties"]["kind"]["const"])
    assert kinds == set(SECTION_KINDS)


def test_every_reference_resolves() -> None:
    text = printed_schema()
    schema = json.loads(text)

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    all_refs = refs(schema)
    assert all_refs
    for ref in all_refs:
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in schema["$defs"]


def test_schema_uses_yaml_keys_and_text_for_dates_and_times() -> None:
    schema = json.loads(printed_schema())
    event = schema["$defs"]["Event"]["properties"]
    assert "register" in event  # the YAML key, not the Python field name
    assert "registration" not in event
    assert event["date"]["type"] == "string"
    assert event["time"]["anyOf"][0]["type"] == "string"  # optional: string or null
    image = schema["$defs"]["Image"]
    assert set(image["required"]) == {"url", "alt"}
    assert image["properties"]["width"]["anyOf"][0]["type"] == "integer"


def test_committed_schema_files_are_up_to_date() -> None:
    printed = printed_schema()
    for copy in SCHEMA_COPIES:
        assert copy.read_text(encoding="utf-8") == printed, (
            f"{copy} is out of date; run: newsletter schema > {copy.relative_to(REPO)}")


def test_example_modelines_point_at_the_schema() -> None:
    for issue in sorted((REPO / "issues").glob("*.yaml")):
        first = issue.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../issue.schema.json", issue
        assert (issue.parent / "../issue.schema.json").resolve().is_file()
