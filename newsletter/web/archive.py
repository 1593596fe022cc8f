"""`/archive/`: the public part of `dist/` that `newsletter build` wrote, and nothing else.

An allow-list: the archive page, the feed, each built issue's web version, its calendar
files and its local images (content-addressed names, so cached for a year). Never
`email.html`/`email.txt` (they carry the unsubscribe placeholder), `issue.json`, dry-run mails
or anything else put into `dist/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

META_NAME = "issue.json"  # = newsletter.render.archive.META_NAME; not imported: it loads the renderer
_SLUG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}"
_ARCHIVE_ISSUE = re.compile(rf"({_SLUG})/(index\.html)?")
_ARCHIVE_ICS = re.compile(rf"({_SLUG})/({_SLUG}\.ics)")
# = newsletter.render.images.NAME (not imported: it loads the content model)
IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}-[0-9a-f]{12}\.(?:jpg|png)")
_ARCHIVE_IMAGE = re.compile(rf"({_SLUG})/({IMAGE_NAME.pattern})")
_ARCHIVE_TOP = {"": "index.html", "index.html": "index.html", "feed.xml": "feed.xml"}
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".xml": "application/atom+xml; charset=utf-8",
                ".ics": "text/calendar; charset=utf-8", ".jpg": "image/jpeg", ".png": "image/png"}
# A local image's name changes with its content: a cached copy never goes stale.
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


def archive_file(dist: Path, path: str) -> tuple[Path, str] | str | None:
    """What `/archive/<path>` serves from `dist`: (file, media type), a redirect target
    (an issue without its trailing slash), or None (404)."""
    if path in _ARCHIVE_TOP:
        file = dist / _ARCHIVE_TOP[path]
    elif re.fullmatch(_SLUG, path) and ".." not in path and (dist / path / META_NAME).is_file():
        return f"/archive/{path}/"
    elif match := _ARCHIVE_IMAGE.fullmatch(path):
        # Written by `build`, and by `send` before the first mail pointing at it (the issue need
        # not be built); only names of the content-addressed form.
        return archive_image(dist, match.group(1), match.group(2))
    elif (match := _ARCHIVE_ISSUE.fullmatch(path) or _ARCHIVE_ICS.fullmatch(path)) and ".." not in path:
        slug, name = match.group(1), match.group(2) or "index.html"
        # Only directories `newsletter build` wrote (it leaves issue.json there).
        if not (dist / slug / META_NAME).is_file():
            return None
        file = dist / slug / name
    else:
        return None
    if not file.is_file():
        return None
    return file, _MEDIA_TYPES[file.suffix]


class Archive:
    """The handlers of `/archive` and `/archive/{path}` for one `dist/` directory."""

    def __init__(self, dist: Path, not_found: Callable[[], Response]) -> None:
        self.dist, self.not_found = dist, not_found

    async def index_redirect(self, request: Request) -> Response:
        """`/archive` → `/archive/`."""
        return RedirectResponse("/archive/", status_code=308)

    async def serve_file(self, request: Request) -> Response:
        """`/archive/{path}`: a file of the allow-list, a redirect to an issue's slash, or 404."""
        found = archive_file(self.dist, request.path_params["path"])
        if found is None:
            return self.not_found()
        if isinstance(found, str):
            return RedirectResponse(found, status_code=308)
        path, media_type = found
        return FileResponse(path, media_type=media_type, headers=image_headers(media_type))


def image_headers(media_type: str) -> dict[str, str] | None:
    """The cache headers of a file of the archive: a year for images, none for the rest."""
    return IMMUTABLE if media_type.startswith("image/") else None


def archive_image(dist: Path, slug: str, name: str) -> tuple[Path, str] | None:
    """A local image `build` (or the preview) wrote into `dist/<slug>/`, with its media type;
    None for any other name (the preview serves images before an issue is built)."""
    if not (re.fullmatch(_SLUG, slug) and ".." not in slug and IMAGE_NAME.fullmatch(name)):
        return None
    file = dist / slug / name
    return (file, _MEDIA_TYPES[file.suffix]) if file.is_file() else None
