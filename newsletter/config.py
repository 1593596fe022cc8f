"""Project settings: `newsletter.toml`, overridden by `NEWSLETTER_<SECTION>__<KEY>`.

Secrets (SMTP password, token secret, DKIM key path) are read only from the
environment or from the project's git-ignored `.env` file; putting them into
`newsletter.toml` is an error, so they never end up in the repository.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from newsletter.errors import ConfigError, Problem
from newsletter.headers import first_unsafe
from newsletter.project import CONFIG_NAME

ENV_PREFIX = "NEWSLETTER_"


def _no_control_chars(value: str) -> str:
    bad = first_unsafe(value)
    if bad is not None:
        raise ValueError("must not contain line breaks or control characters")
    return value


def _base_url(value: str) -> str:
    value = _no_control_chars(value.strip()).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"`{value}` must be an absolute URL such as https://newsletter.example.org")
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"`{value}` is not a time zone name such as Europe/Berlin") from None
    return value


def _mailbox(value: str) -> str:
    """One address with a domain, optionally with a name: `Smart City <news@example.org>`.
    Parsed by the same header parser that builds the From header at send time."""
    from email.policy import SMTP

    parsed = SMTP.header_factory("From", value)
    addresses = getattr(parsed, "addresses", ())
    if parsed.defects or len(addresses) != 1 or not addresses[0].domain or not addresses[0].username:
        raise ValueError(f"`{value}` is not one e-mail address (e.g. `Smart City <news@example.org>`)")
    return value


HeaderText = Annotated[str, AfterValidator(_no_control_chars)]
Mailbox = Annotated[str, AfterValidator(_no_control_chars), AfterValidator(_mailbox)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewsletterSettings(Section):
    title: HeaderText = "Newsletter"
    language: str = Field("de", description="language of the email (`lang`) and locale of dates")
    base_url: Annotated[str, AfterValidator(_base_url)] = Field(
        "http://127.0.0.1:8000", description="public URL where `newsletter serve` answers"
    )
    from_: Mailbox = Field(
        "Newsletter <newsletter@example.org>", alias="from", description="From: header"
    )
    reply_to: Mailbox | None = None
    list_id: HeaderText | None = Field(None, description="List-Id; default derived from base_url")
    timezone: Annotated[str, AfterValidator(_timezone)] = "Europe/Berlin"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImprintSettings(Section):
    """The legally required provider identification (§ 5 DDG)."""

    name: str = "Musterstadt – Stabsstelle Digitalisierung"
    address: str = "Rathausplatz 1, 12345 Musterstadt"
    represented_by: str | None = None
    email: str | None = "newsletter@example.org"
    phone: str | None = None
    url: str | None = None
    privacy_url: str | None = None
    text: str | None = Field(None, description="extra lines for the footer")


class ThemeSettings(Section):
    primary_color: str = "#005f87"
    text_color: str = "#1a1a1a"
    background_color: str = "#f2f4f5"
    link_color: str = "#005f87"
    font_family: str = "Helvetica, Arial, sans-serif"
    logo_url: str | None = None
    logo_alt: str | None = None
    logo_width: int = 160
    logo_height: int | None = None


class SmtpSettings(Section):
    host: str | None = Field(None, description="no host: deliver into the local outbox/ Maildir")
    port: int = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = Field(None, description="only from the environment / .env")
    timeout: float = 30.0
    ca_file: str | None = Field(None, description="extra CA certificates (PEM) to trust for TLS")


class DeliverySettings(Section):
    concurrency: int = Field(4, ge=1, le=100)
    rate: float = Field(0, ge=0, description="messages per second across all connections; 0 = unlimited")
    retries: int = Field(5, ge=0)
    max_policy_failures: int = Field(10, ge=1, description="pause the send after this many 5.7.x in a row")
    retry_delay: float = Field(2.0, ge=0,
                               description="first retry after a 4xx, in seconds; doubles each time")
    require_approval: bool = Field(False, description="`send --list` and scheduled sends only "
                                   "for an issue approved as it is (`newsletter approve`)")


class DatabaseSettings(Section):
    url: str = Field("sqlite:///subscribers/newsletter.db",
                     description="SQLAlchemy URL; relative SQLite paths are relative to the project")


class ServeSettings(Section):
    host: str = "127.0.0.1"
    port: int = 8000
    consent_text: str = (
        "Ich möchte den Newsletter per E-Mail erhalten. Die Einwilligung kann ich jederzeit "
        "über den Abmeldelink in jeder Ausgabe widerrufen."
    )
    consent_version: str = Field("1", min_length=1, max_length=64,
                                 description="stored with each sign-up (a 64-character column)")
    confirm_days: int = Field(7, ge=1)
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    signups_per_ip: int = Field(10, ge=1, description="sign-ups per client IP within signup_window")
    signup_window: int = Field(3600, ge=1, description="seconds of the per-IP sign-up rate limit window")
    max_body_bytes: int = Field(16384, ge=1024, description="largest accepted request body")


def _address(value: str) -> str:
    """A bare address (`bounces@example.org`): the envelope sender's base, no display name."""
    value = _no_control_chars(value.strip())
    local, _, domain = value.rpartition("@")
    if not local or not domain or any(c in value for c in " <>,;\"+"):
        raise ValueError(f"`{value}` is not a bare e-mail address such as bounces@example.org "
                         "(without a name, without `+`)")
    return value


def _sns_topic_arn(value: str) -> str:
    if not re.fullmatch(r"arn:aws(-cn|-us-gov)?:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}", value):
        raise ValueError(f"`{value}` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
    return value


class HooksSettings(Section):
    """Provider webhooks at /hooks/<provider> (docs/feedback-webhooks.md); none set = switched off."""

    sns_topic_arns: list[Annotated[str, AfterValidator(_sns_topic_arn)]] = Field(
        default_factory=list, description="SNS topics accepted at /hooks/ses")
    mailgun_signing_key: SecretStr | None = Field(None, description="only from the environment / .env")
    postmark_user: str | None = None
    postmark_password: SecretStr | None = Field(None, description="only from the environment / .env")
    generic_secret: SecretStr | None = Field(None, description="only from the environment / .env")


class BouncesSettings(Section):
    """Bounces and complaints that arrive after the send (docs/feedback.md)."""

    address: Annotated[str, AfterValidator(_address)] | None = Field(
        None, description="envelope sender base; each message goes out from a VERP address "
                          "local+TAG@domain. None: the From address, no bounce processing")
    mailbox: str | None = Field(None, description="where bounce reports arrive: imaps://user@host/INBOX, "
                                                  "pop3s://user@host, or a Maildir/mbox path")
    password: SecretStr | None = Field(None, description="mailbox password; only from the environment")
    ca_file: str | None = Field(None, description="extra CA certificates (PEM) for the mailbox server")
    soft_limit: int = Field(3, ge=1, description="soft bounces that make a member bounced …")
    soft_sends: int = Field(2, ge=1, description="… spread over at least this many sends …")
    soft_days: int = Field(30, ge=1, description="… within this many days")
    hooks: HooksSettings = HooksSettings()


_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}\Z")


def _topics(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        if not _KEY.match(key):
            raise ValueError(f"topic `{key}`: a short key of lower-case letters, digits, `-`, `_` "
                             "(e.g. verkehr), with its label as the value")
        if not label.strip() or first_unsafe(label) is not None:
            raise ValueError(f"topic `{key}`: the label must be one line of text")
    return value


def _segment_names(value: dict[str, SegmentSettings]) -> dict[str, SegmentSettings]:
    """A segment's name is typed on the command line and stored with each send (100 characters)."""
    for name in value:
        if not (0 < len(name) <= 100 and all(c.isalnum() or c in "-_." for c in name)):
            raise ValueError(f"segment {name!r}: a name of letters, digits, `-`, `_` and `.` "
                             "(at most 100 characters), e.g. [segments.jena]")
    return value


class SegmentSettings(Section):
    """A named part of a list's members (docs/segments.md): `newsletter send --segment NAME`."""

    where: str = Field(description='the condition, e.g. Kommune = "Jena" and Rolle in ["Verwaltung"]')
    list: str | None = Field(None, description="the list it belongs to (default: any list)")
    title: str | None = None


class SecretSettings(Section):
    token: SecretStr | None = Field(None, description="HMAC key for unsubscribe/confirm tokens")
    old_tokens: list[SecretStr] = Field(default_factory=list, description="previous keys, still accepted")
    dkim_key_file: str | None = None
    dkim_selector: str | None = None


class Settings(BaseSettings):
    """All settings of one project."""

    newsletter: NewsletterSettings = NewsletterSettings()
    imprint: ImprintSettings = ImprintSettings()
    theme: ThemeSettings = ThemeSettings()
    smtp: SmtpSettings = SmtpSettings()
    delivery: DeliverySettings = DeliverySettings()
    database: DatabaseSettings = DatabaseSettings()
    serve: ServeSettings = ServeSettings()
    bounces: BouncesSettings = BouncesSettings()
    # [topics.<list>] key = "German label": what members of that list may choose (docs/topics.md)
    topics: dict[str, Annotated[dict[str, str], AfterValidator(_topics)]] = Field(default_factory=dict)
    # [segments.<name>] where = "…": named conditions on members (docs/segments.md)
    segments: Annotated[dict[str, SegmentSettings], AfterValidator(_segment_names)] = Field(
        default_factory=dict)
    secret: SecretSettings = SecretSettings()

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats .env beats newsletter.toml (passed as init values).
        return (env_settings, dotenv_settings, init_settings)


# Keys that must never be written into newsletter.toml.
SECRET_KEYS: set[tuple[str, ...]] = {
    ("smtp", "password"), ("secret", "token"), ("secret", "old_tokens"), ("bounces", "password"),
    ("bounces", "hooks", "mailgun_signing_key"), ("bounces", "hooks", "postmark_password"),
    ("bounces", "hooks", "generic_secret"),
}


def load_settings(path: Path) -> Settings:
    """Read newsletter.toml (if present), apply .env and environment overrides, validate."""
    file = str(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line, col = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(problems=[Problem(file, line, col, "", f"TOML syntax error: {message}")]) from None
    problems = [
        Problem(file, *toml_position(text, path), ".".join(path),
                f"secrets do not belong in {CONFIG_NAME} (it is committed to git); set "
                f"{ENV_PREFIX}{'__'.join(p.upper() for p in path)} in the environment or in .env")
        for path in sorted(SECRET_KEYS)
        if _get_path(data, path) is not _MISSING
    ]
    if problems:
        raise ConfigError(problems=problems)
    env_file = path.parent / ".env"
    try:
        settings = Settings(_env_file=env_file if env_file.is_file() else None, **data)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(problems=_config_problems(exc, text, file, data)) from None
    return settings


def _config_problems(exc: ValidationError, text: str, file: str, data: dict[str, Any]) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        in_file = _get_path(data, loc) is not _MISSING
        env_name = ENV_PREFIX + "__".join(p.upper() for p in loc)
        if err["type"] == "extra_forbidden":
            names = _known_keys(loc[:-1])
            match = difflib.get_close_matches(loc[-1], names, n=1)
            message = f"unknown key `{loc[-1]}`" + (f", did you mean `{match[0]}`?" if match else "")
        elif err["type"] in ("int_parsing", "float_parsing"):
            message = f"expected a number, not `{err['input']}`"
        # The environment wins over the file, so a bad value set there is named first.
        if env_name.lower() in {k.lower() for k in os.environ}:
            problems.append(Problem(f"environment {env_name}", None, None, ".".join(loc), message))
        elif err["type"] == "missing" and len(loc) > 1 and _get_path(data, loc[:-1]) is not _MISSING:
            # A required key left out of a table the file has: point at the table.
            line, col = toml_position(text, loc[:-1])
            problems.append(Problem(file, line, col, ".".join(loc), f"`{loc[-1]}` is missing"))
        elif in_file or err["type"] == "extra_forbidden":
            line, col = toml_position(text, loc, at_key=err["type"] == "extra_forbidden")
            problems.append(Problem(file, line, col, ".".join(loc), message))
        else:
            problems.append(Problem(file, None, None, ".".join(loc), message))
    return problems


_MISSING = object()


def _get_path(data: Any, loc: tuple[str, ...]) -> Any:
    for part in loc:
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _known_keys(loc: tuple[str, ...]) -> list[str]:
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part)
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return [f.alias or name for name, f in model.model_fields.items()]



def toml_position(
    text: str, loc: tuple[str, ...], *, at_key: bool = False
) -> tuple[int | None, int | None]:
    """Line and column of the value (or with `at_key`, the key) of `loc` in TOML text (tomllib
    keeps no positions). `loc` may name a nested table: ("segments", "jena", "where") is the key
    `where` under `[segments.jena]`; ("topics", "news") the header `[topics.news]` itself."""
    headers = {}  # table name → line number of its header
    for number, line in enumerate(text.splitlines(), start=1):
        if m := re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line):
            headers.setdefault(re.sub(r"\s*\.\s*", ".", m.group(1)), number)
    for split in range(len(loc), 0, -1):  # the longest table name the file has
        section = ".".join(loc[:split])
        if section in headers:
            rest = loc[split:]
            if rest and (found := _key_position(text, section, rest[0], at_key)):
                return found
            return headers[section], 1
    if len(loc) >= 1:  # a key of the top level
        return _key_position(text, "", loc[0], at_key) or (None, None)
    return None, None


def _key_position(text: str, section: str, key: str, at_key: bool) -> tuple[int, int] | None:
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if m := re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line):
            current = re.sub(r"\s*\.\s*", ".", m.group(1))
            continue
        if current == section and (m := re.match(rf"^(\s*){re.escape(key)}\s*=\s*", line)):
            return number, (m.end(1) if at_key else m.end()) + 1
    return None
