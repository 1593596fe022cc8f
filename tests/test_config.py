"""newsletter.toml: environment overrides, secrets kept out, errors with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from newsletter.cli.common import get_project
from newsletter.config import load_settings
from newsletter.errors import ConfigError, ProjectNotFound
from newsletter.project import open_project


def config_file(project_dir: Path) -> Path:
    return project_dir / "newsletter.toml"


def replace_in_config(project_dir: Path, old: str, new: str) -> Path:
    path = config_file(project_dir)
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def line_of(path: Path, start: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(start))


def problems(project_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        open_project(project_dir)
    return caught.value.lines()


def test_skeleton_settings_load(project_dir: Path) -> None:
    settings = open_project(project_dir).settings
    assert settings.newsletter.title == "Smart zu wissen"
    assert settings.newsletter.from_ == "Smart City Newsletter <newsletter@example.org>"
    assert settings.smtp.host is None  # no host: the outbox
    assert settings.smtp.port == 587


def test_environment_overrides_the_file(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP__PORT", "2525")
    monkeypatch.setenv("NEWSLETTER_NEWSLETTER__TITLE", "Aus der Umgebung")
    monkeypatch.setenv("NEWSLETTER_DELIVERY__CONCURRENCY", "8")
    settings = open_project(project_dir).settings
    assert settings.smtp.port == 2525
    assert settings.newsletter.title == "Aus der Umgebung"
    assert settings.delivery.concurrency == 8  # also set in the file (4): the environment wins


def test_secrets_come_from_the_environment(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP__PASSWORD", "geheim")
    monkeypatch.setenv("NEWSLETTER_SECRET__TOKEN", "s" * 32)
    settings = open_project(project_dir).settings
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "geheim"
    assert "geheim" not in repr(settings)  # never printed by accident


def test_secrets_come_from_dot_env(project_dir: Path) -> None:
    (project_dir / ".env").write_text("NEWSLETTER_SMTP__PASSWORD=aus-der-datei\n", encoding="utf-8")
    settings = open_project(project_dir).settings
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "aus-der-datei"


def test_smtp_password_in_toml_is_an_error(project_dir: Path) -> None:
    path = replace_in_config(project_dir, "[smtp]\n", '[smtp]\npassword = "geheim"\n')
    line = line_of(path, "password")
    assert problems(project_dir) == [
        f"{path}:{line}:12: smtp.password: secrets do not belong in newsletter.toml (it is "
        "committed to git); set NEWSLETTER_SMTP__PASSWORD in the environment or in .env"
    ]


def test_secret_token_in_toml_is_an_error(project_dir: Path) -> None:
    path = config_file(project_dir)
    with path.open("a", encoding="utf-8") as f:
        f.write('\n[secret]\ntoken = "abc"\n')
    line = line_of(path, "token")
    assert problems(project_dir) == [
        f"{path}:{line}:9: secret.token: secrets do not belong in newsletter.toml (it is "
        "committed to git); set NEWSLETTER_SECRET__TOKEN in the environment or in .env"
    ]


def test_a_webhook_secret_in_a_nested_table_is_an_error(project_dir: Path) -> None:
    path = config_file(project_dir)
    with path.open("a", encoding="utf-8") as f:
        f.write('\n[bounces]\naddress = "bounces@example.org"\n\n[bounces.hooks]\ngeneric_secret = "abc"\n')
    line = line_of(path, "generic_secret")
    assert problems(project_dir) == [
        f"{path}:{line}:18: bounces.hooks.generic_secret: secrets do not belong in newsletter.toml (it "
        "is committed to git); set NEWSLETTER_BOUNCES__HOOKS__GENERIC_SECRET in the environment or in .env"
    ]


def test_bounce_settings_are_checked_where_they_are_written(project_dir: Path) -> None:
    path = config_file(project_dir)
    with path.open("a", encoding="utf-8") as f:
        f.write('\n[bounces]\naddress = "Bounces <b@example.org>"\n\n[bounces.hooks]\npostmark_usr = "pm"\n')
    address_line = line_of(path, 'address = "Bounces')
    assert problems(project_dir) == [
        f"{path}:{address_line}:11: bounces.address: `Bounces <b@example.org>` is not a bare "
        "e-mail address such as bounces@example.org (without a name, without `+`)",
        f"{path}:{line_of(path, 'postmark_usr')}:1: bounces.hooks.postmark_usr: unknown key "
        "`postmark_usr`, did you mean `postmark_user`?",
    ]


def test_unknown_key_suggests_the_closest(project_dir: Path) -> None:
    path = replace_in_config(project_dir, 'title = "Smart zu wissen"', 'titel = "Smart zu wissen"')
    line = line_of(path, "titel")
    assert problems(project_dir) == [
        f"{path}:{line}:1: newsletter.titel: unknown key `titel`, did you mean `title`?"
    ]


def test_unknown_indented_key_points_at_the_key(project_dir: Path) -> None:
    path = replace_in_config(project_dir, "concurrency = 4", "  concurency = 4")
    line = line_of(path, "  concurency")
    assert problems(project_dir) == [
        f"{path}:{line}:3: delivery.concurency: unknown key `concurency`, did you mean `concurrency`?"
    ]


def test_toml_syntax_error_has_line_and_column(project_dir: Path) -> None:
    path = replace_in_config(project_dir, 'language = "de"', 'language = "de')
    line = line_of(path, "language")
    [message] = problems(project_dir)
    assert message.startswith(f"{path}:{line}:")
    column = int(message.split(":")[2])
    assert column > len('language = "')
    assert "TOML syntax error" in message


def test_bad_value_in_the_file_points_at_the_value(project_dir: Path) -> None:
    path = replace_in_config(project_dir, "concurrency = 4", "concurrency = 0")
    line = line_of(path, "concurrency")
    assert problems(project_dir) == [
        f"{path}:{line}:15: delivery.concurrency: Input should be greater than or equal to 1"
    ]


def test_bad_value_from_the_environment_names_the_variable(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP__PORT", "fünfhundert")
    assert problems(project_dir) == [
        "environment NEWSLETTER_SMTP__PORT: smtp.port: expected a number, not `fünfhundert`"
    ]


def test_bad_environment_value_wins_over_the_file_position(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # concurrency is also in the file; the bad value is the environment's, so name that.
    monkeypatch.setenv("NEWSLETTER_DELIVERY__CONCURRENCY", "0")
    assert problems(project_dir) == [
        "environment NEWSLETTER_DELIVERY__CONCURRENCY: delivery.concurrency: "
        "Input should be greater than or equal to 1"
    ]


def test_bad_choice_lists_the_choices(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "ssl")
    [message] = problems(project_dir)
    assert message.startswith("environment NEWSLETTER_SMTP__SECURITY: smtp.security: ")
    assert "'starttls', 'tls' or 'none'" in message


def test_header_values_must_not_contain_line_breaks(project_dir: Path) -> None:
    path = replace_in_config(project_dir, 'reply_to = "redaktion@example.org"',
                             'reply_to = "redaktion@example.org\\nBcc: alle@example.org"')
    line = line_of(path, "reply_to")
    assert problems(project_dir) == [
        f"{path}:{line}:12: newsletter.reply_to: must not contain line breaks or control characters"
    ]


@pytest.mark.parametrize("bad", ["newsletter.example.org", "Redaktion <news@>",
                                 "a@example.org, b@example.org"])
def test_from_must_be_one_address_when_the_config_loads(project_dir: Path, bad: str) -> None:
    path = config_file(project_dir)
    original = next(line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.startswith("from = "))
    replace_in_config(project_dir, original, f'from = "{bad}"')
    (message,) = problems(project_dir)
    assert message == (f"{path}:{line_of(path, 'from = ')}:8: newsletter.from: `{bad}` is not one "
                       "e-mail address (e.g. `Smart City <news@example.org>`)")


def test_project_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectNotFound, match="newsletter init"):
        open_project()


def test_project_is_found_from_a_subdirectory(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project_dir / "issues")
    assert open_project().root == project_dir.resolve()


def test_config_error_in_a_command_is_printed_without_traceback(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = replace_in_config(project_dir, "[smtp]\n", '[smtp]\npassword = "geheim"\n')
    with pytest.raises(typer.Exit) as caught:
        get_project(project_dir)  # what every command that needs the project calls
    assert caught.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:{line_of(path, 'password')}:12: smtp.password: secrets")
    assert "Traceback" not in err


def test_unknown_time_zone_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text('[newsletter]\ntimezone = "Europe/Berln"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    (line,) = caught.value.lines()
    assert line.startswith(f"{config}:2:")
    assert "newsletter.timezone: `Europe/Berln` is not a time zone name" in line
