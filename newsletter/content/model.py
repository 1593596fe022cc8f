"""The issue format: what an editor writes in `issues/<slug>.yaml`.

Pydantic v2 models. Every model forbids unknown keys (the loader suggests the
closest known key). Scalars arrive from the YAML loader as text and are converted
here, so the YAML 1.1 traps (`18:00`, `no`, `2026-02-31`) cannot corrupt content.
Checks that need more than one field (end before start, …) are model validators
raising `_field_error`, which names the field so `newsletter.content.validate` can point at
the exact offending value; only warnings (long subject, …) live in `validate`.
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from newsletter.content.fields import DEFAULT_GREETING_FALLBACK, field_problems, has_field
from newsletter.content.images import is_local, local_path_error
from newsletter.content.markdown import is_absolute_link, located_markdown_problems, summarize
from newsletter.headers import describe, first_unsafe

# --------------------------------------------------------------------------- scalars


def _text(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if has_field(value):
        raise ValueError("personal fields ({{…}}) can be used in texts (intro, outro, bodies) and "
                         "the greeting, not here")
    return value


def _plain(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _header_text(value: str) -> str:
    value = _text(value)
    bad = first_unsafe(value)
    if bad is not None:
        raise ValueError(f"contains {describe(bad)}; this text goes into a mail header, where a "
                         "line break could add headers of its own: write it on one line")
    return value


def _field_error(field: str, message: str) -> PydanticCustomError:
    """An error about one field, raised by a model validator (see validate.py)."""
    # The message travels in the context so braces in user text are not formatted.
    return PydanticCustomError("field_check", "{message}", {"message": message, "field": field})


def _markdown(value: str) -> str:
    # Lines stripped off the front, so a problem's line counts from the raw value.
    skipped = value[: len(value) - len(value.lstrip())].count("\n")
    value = _plain(value)
    problems = sorted(located_markdown_problems(value) + field_problems(value))
    if problems:
        raise PydanticCustomError(
            "markdown", "{message}", {"message": summarize(problems), "line": skipped + problems[0][0]}
        )
    return value


def _url(value: str) -> str:
    value = value.strip()
    if any(c.isspace() for c in value):
        raise ValueError(f"`{value}` contains spaces; encode them as %20")
    if not is_absolute_link(value) or value.startswith("mailto:"):
        raise ValueError(f"`{value}` is not an absolute http(s) URL (it must start with https://)")
    return value


_GERMAN_DATE = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})$")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def parse_day(text: str) -> date:
    """`2026-02-10` or the German `10.02.2026` as a date (the one rule for dates an editor
    types: issue files and `newsletter new --date`); ValueError names what is wrong."""
    text = text.strip()
    if m := _ISO_DATE.match(text):
        year, month, day = (int(g) for g in m.groups())
    elif m := _GERMAN_DATE.match(text):
        day, month, year = (int(g) for g in m.groups())
    else:
        raise ValueError(f"`{text}` is not a date; write it as 2026-02-10 or 10.02.2026")
    if not 1 <= month <= 12:
        raise ValueError(f"`{text}` is not a valid date (there is no month {month})")
    try:
        return date(year, month, day)
    except ValueError:
        raise ValueError(f"`{text}` is not a valid date (no such day)") from None


def _date(value: Any) -> Any:
    return parse_day(value) if isinstance(value, str) else value


_FILE_NAME = re.compile(r"^[\w\-.]+\.(?:jpe?g|png|gif|webp|svg|avif|tiff?|bmp|heic)$", re.IGNORECASE)


def _alt(value: str) -> str:
    value = _text(value)
    if _FILE_NAME.match(value):
        raise ValueError(f"alt text `{value}` is a file name; describe what the image shows")
    return value


_TIME = re.compile(r"^(\d{1,2})[:.](\d{2})(?:\s*Uhr)?$")


def _time(value: Any) -> Any:
    """Accept `18:00`, `9:30`, `18.00` and `18:00 Uhr`."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"`{text}` is not a time; write it as 18:00")
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 23 or minute > 59:
        raise ValueError(f"`{text}` is not a valid time of day")
    return time(hour, minute)


Text = Annotated[str, AfterValidator(_text)]
# Text that ends up in a mail header (subject, preheader is also shown beside it).
HeaderText = Annotated[str, AfterValidator(_header_text)]
"""One line of plain text (a title, a label)."""

Markdown = Annotated[
    str,
    AfterValidator(_markdown),
    Field(description="Markdown: paragraphs, **bold**, *italics*, [links](https://…), bullet lists"),
]
Url = Annotated[str, AfterValidator(_url), Field(description="absolute https:// URL")]


def _image_url(value: str) -> str:
    """An absolute http(s) URL, or a path to a local JPEG/PNG/WebP file (docs/images.md)."""
    value = value.strip()
    if not is_local(value):
        return _url(value)
    problem = local_path_error(value)
    if problem is not None:
        raise ValueError(problem)
    return value


ImageUrl = Annotated[str, AfterValidator(_image_url)]
Day = Annotated[
    date,
    BeforeValidator(_date),
    WithJsonSchema({"type": "string", "description": "date: 2026-02-10 or 10.02.2026"}),
]
ClockTime = Annotated[
    time,
    BeforeValidator(_time),
    WithJsonSchema({"type": "string", "pattern": r"^\d{1,2}[:.]\d{2}( ?Uhr)?$",
                    "description": "time of day, e.g. 18:00"}),
]
Pixels = Annotated[int, Field(gt=0, le=10000)]

# A topic key as `[topics.<list>]` in newsletter.toml declares it (config.py checks the same form).
_TOPIC_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}\Z")


def _topic_key(value: str) -> str:
    value = value.strip()
    if not _TOPIC_KEY.match(value):
        hint = f" (write `{value.lower()}`)" if _TOPIC_KEY.match(value.lower()) else ""
        raise ValueError(f"`{value}` is not a topic key{hint}: keys are short, lower-case letters, "
                         "digits, `-` and `_`, as declared under `[topics.<list>]` in newsletter.toml")
    return value


TopicKey = Annotated[str, AfterValidator(_topic_key)]
TOPICS_DESCRIPTION = ("topic keys, e.g. [verkehr, bildung]: only members who chose one of them (or no "
                      "topic at all) get this section; without `topics` everybody does")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- parts


class Image(Model):
    """An image in the email: an https:// URL, or a file in the project that `build` puts online."""

    url: ImageUrl = Field(description="absolute https:// URL of the image file, or the path of a "
                          "JPEG, PNG or WebP file relative to the issue file (bilder/kongress.jpg)")
    alt: Annotated[str, AfterValidator(_alt)] = Field(
        description="what the image shows, for screen readers and blocked images"
    )
    caption: Markdown | None = None
    credit: Text | None = Field(None, description="e.g. `wal_172619 / pixabay` or `©Stadt Jena`")
    link: Url | None = Field(None, description="where a click on the image leads")
    width: Pixels | None = Field(None, description="width of the image file in pixels (a local "
                                 "image: the most it is shown at; measured when left out)")
    height: Pixels | None = Field(None, description="height of the image file in pixels (a local "
                                  "image: measured from the file)")

    @model_validator(mode="after")
    def _both_sizes(self) -> Image:
        if (self.width is None) != (self.height is None):
            missing = "height" if self.height is None else "width"
            raise _field_error(
                "width" if missing == "height" else "height",
                f"give both `width` and `height` of the image, or neither (`{missing}` is missing)",
            )
        return self


class Link(Model):
    """A call to action: rendered as `→ label` / a button."""

    label: Text
    url: Url


class RegisterLink(Model):
    """Where readers register for an event."""

    url: Url
    label: Text = "Jetzt anmelden"


class Entry(Model):
    """A dated sub-entry of a digest item, like one peer-learning round."""

    title: Text
    body: Markdown | None = None
    date: Day | None = None
    date_label: Text = Field("Start", description="shown before the date: `Start: 10. Februar 2026`")
    facts: dict[str, Text] = Field(
        default_factory=dict, description="further `Label: value` pairs, e.g. `Partner: MPSC Süderbrarup`"
    )
    link: Link | None = None


# --------------------------------------------------------------------------- sections


class DigestItem(Model):
    """One news item of a digest such as "Smart zu wissen"."""

    headline: Text | None = Field(None, description="omit only for a follow-up to the item before")
    body: Markdown | None = None
    image: Image | None = None
    entries: list[Entry] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list, description="calls to action, shown as `→ label`")

    @model_validator(mode="after")
    def _not_empty(self) -> DigestItem:
        if not (self.headline or self.body):
            raise ValueError("an item needs a `headline` or a `body`")
        return self


class Event(Model):
    title: Text
    date: Day = Field(description="first day")
    end: Day | None = Field(None, description="last day, for events over several days")
    time: ClockTime | None = Field(None, description="start time, e.g. 09:30")
    end_time: ClockTime | None = None
    venue: Text | None = Field(None, description="e.g. `Smart Village Berlin`")
    address: Text | None = Field(None, description="street and town, e.g. `Halle (Saale)`")
    motto: Text | None = None
    body: Markdown | None = None
    image: Image | None = None
    registration: RegisterLink | None = Field(None, alias="register", description="where to sign up")
    note: Text | None = Field(
        None, description="e.g. `Die Teilnahme ist kostenfrei, die Plätze sind begrenzt.`"
    )
    link: Link | None = Field(None, description="more information")

    @model_validator(mode="after")
    def _in_order(self) -> Event:
        if self.end is not None and self.end < self.date:
            raise _field_error(
                "end", f"the event ends ({self.end:%d.%m.%Y}) before it starts ({self.date:%d.%m.%Y})"
            )
        if self.end_time is not None and self.time is None:
            raise _field_error("end_time", "an `end_time` needs a start `time`")
        if (
            self.end_time is not None and self.time is not None
            and (self.end is None or self.end == self.date) and self.end_time <= self.time
        ):
            raise _field_error(
                "end_time",
                f"the event ends ({self.end_time:%H:%M}) before it starts ({self.time:%H:%M})",
            )
        return self


class LinkItem(Model):
    title: Text
    url: Url
    teaser: Markdown | None = None
    date: Day | None = None


class NewsItem(Model):
    date: Day
    title: Text
    teaser: Markdown | None = None
    url: Url


class TextBlock(Model):
    text: Markdown


class HeadingBlock(Model):
    heading: Text


class QuoteBlock(Model):
    quote: Text
    by: Text | None = Field(None, description="who said it, e.g. `Elisabeth Merk, Stadtbaurätin`")


class ImageBlock(Model):
    image: Image


def _block_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for kind in ("text", "heading", "quote", "image"):
            if kind in value:
                return kind
        return None
    if isinstance(value, BaseModel):
        return {TextBlock: "text", HeadingBlock: "heading", QuoteBlock: "quote", ImageBlock: "image"}[
            type(value)
        ]
    return None


Block = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[HeadingBlock, Tag("heading")]
    | Annotated[QuoteBlock, Tag("quote")]
    | Annotated[ImageBlock, Tag("image")],
    Discriminator(
        _block_kind,
        custom_error_type="block_kind",
        custom_error_message="a block needs one of the keys `text`, `heading`, `quote` or `image`",
    ),
]


class SectionBase(Model):
    heading: Text = Field(description="the section's heading, e.g. `Smart zu wissen`")
    intro: Markdown | None = None
    topics: list[TopicKey] = Field(default_factory=list, description=TOPICS_DESCRIPTION)


class DigestSection(SectionBase):
    """News items with headline, text, sub-entries and calls to action."""

    kind: Literal["digest"]
    items: list[DigestItem] = Field(min_length=1)


class EventsSection(SectionBase):
    kind: Literal["events"]
    events: list[Event] = Field(min_length=1)


class LinksSection(SectionBase):
    """A list of links, e.g. the latest blog posts."""

    kind: Literal["links"]
    links: list[LinkItem] = Field(min_length=1)


class NewsSection(SectionBase):
    """Dated short news: `[18.03.2026] Title — teaser … mehr…`."""

    kind: Literal["news"]
    more: Text = Field("mehr…", description="label of each item's link")
    items: list[NewsItem] = Field(min_length=1)


class ArticleSection(Model):
    """A blog post or conference report: a sequence of text, sub-headings, quotes and images."""

    kind: Literal["article"]
    heading: Text = Field(description="the article's title")
    kicker: Text | None = Field(None, description="small label above the title, e.g. `Konferenzbericht`")
    date: Day | None = None
    author: Text | None = None
    lead: Markdown | None = Field(None, description="the opening paragraph, shown emphasised")
    image: Image | None = None
    blocks: list[Block] = Field(default_factory=list)
    gallery: list[Image] = Field(default_factory=list)
    link: Link | None = Field(None, description="e.g. the full report on the website")
    topics: list[TopicKey] = Field(default_factory=list, description=TOPICS_DESCRIPTION)


class TextSection(SectionBase):
    """Free text under a heading."""

    kind: Literal["text"]
    body: Markdown


Section = Annotated[
    DigestSection | EventsSection | LinksSection | NewsSection | ArticleSection | TextSection,
    Field(discriminator="kind"),
]
SECTION_KINDS = ("digest", "events", "links", "news", "article", "text")


def _greeting_text(value: str) -> str:
    value = _plain(value)
    bad = first_unsafe(value)
    if bad is not None:
        raise ValueError(f"contains {describe(bad)}; the greeting is one line")
    problems = field_problems(value, greeting=True)
    if problems:
        raise ValueError(problems[0][1])
    return value


GreetingText = Annotated[str, AfterValidator(_greeting_text)]


class GreetingSpec(Model):
    """`greeting:` with its own line for readers without a name (or another field's value)."""

    text: GreetingText = Field(description="e.g. Guten Tag {{name}},")
    fallback: Text = Field(DEFAULT_GREETING_FALLBACK,
                           description="the line for readers without a value (Liebe Leserinnen und Leser,)")


class Issue(Model):
    """One newsletter issue."""

    subject: HeaderText = Field(description="the e-mail subject; keep it under 78 characters")
    preheader: HeaderText | None = Field(
        None, description="the preview line mail clients show after the subject")
    date: Day = Field(description="publication date")
    slug: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")] | None = Field(
        None, description="URL name of the issue; default: the file name without .yaml"
    )
    greeting: GreetingText | GreetingSpec | None = Field(
        None, description="personal first line, e.g. `Guten Tag {{name}},` (readers without a name: "
                          f"`{DEFAULT_GREETING_FALLBACK}`, or set `fallback:`)")
    intro: Markdown | None = Field(None, description="editorial text before the first section")
    outro: Markdown | None = Field(None, description="editorial text after the last section")
    sections: list[Section] = Field(min_length=1)
