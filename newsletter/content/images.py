"""Local images: `image: url: bilder/kongress.jpg`, a path relative to the issue file.

The issue format's part of them: which `url` is a local path, whether its spelling is one
(`local_path_error`, run by the model), and whether the file it names is a JPEG, PNG or WebP
image inside the project (`file_problem`, run by `validate` with the position of the `url`).
It reads the file's first bytes only; what happens to the image (resized, its metadata
stripped, copied into the archive) is `newsletter.render.images` (docs/images.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from newsletter.content.source import Loc

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\Bilder\x.jpg: a path, not a URL scheme
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EXAMPLE = "bilder/kongress.jpg"


def is_local(url: str) -> bool:
    """Whether an image's `url` is a path to a file (anything without a URL scheme)."""
    url = url.strip()
    return not _SCHEME.match(url) or bool(_DRIVE.match(url))


def local_path_error(path: str) -> str | None:
    """What is wrong with the spelling of a local image path, or None. Whether the file exists
    and is an image is `file_problem`'s question."""
    if path.startswith(("/", "\\", "~")) or _DRIVE.match(path):
        return (f"`{path}` is an absolute path; write the path relative to the issue file, "
                f"e.g. `{EXAMPLE}`")
    if "\\" in path:
        return f"`{path}`: separate folders with `/`, e.g. `{EXAMPLE}`"
    if _CONTROL.search(path):
        return f"`{path}` contains a control character"
    if not path.lower().endswith(SUFFIXES):
        return (f"`{path}` is not an image file: a local image must be a JPEG, PNG or WebP file "
                "(.jpg, .jpeg, .png, .webp)")
    return None


def resolve(path: str, issue_file: Path) -> Path:
    """The file a local image path names: relative to the issue file's directory."""
    return (issue_file.resolve().parent / path.strip()).resolve()


def _sniff(head: bytes) -> str | None:
    """JPEG, PNG or WEBP by the file's first bytes (the name may lie)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def file_problem(path: str, issue_file: Path, root: Path | None) -> str | None:
    """What is wrong with the file a (well-spelt) local image path names, or None: outside the
    project directory `root` (and outside the issue file's own directory, for a draft kept
    elsewhere; not checked when `root` is None: no project known), missing, not a file,
    unreadable, or not a JPEG, PNG or WebP image."""
    path = path.strip()
    try:  # a name too long for the file system, a symlink loop: a mistake, not a crash
        target = resolve(path, issue_file)
        if root is not None and not (target.is_relative_to(root.resolve())
                                     or target.is_relative_to(issue_file.resolve().parent)):
            return (f"`{path}` points outside the project directory ({root}); put the image into "
                    f"the project, e.g. `{EXAMPLE}` next to the issue files")
        if not target.exists():
            first = path.split("/", 1)[0]
            hint = (f"; an image on the web needs its full address: https://{path}"
                    if "/" in path and "." in first else "")
            return f"no such file: `{path}` (looked for {target}){hint}"
        if not target.is_file():
            return f"`{path}` is not a file"
    except (OSError, RuntimeError) as exc:
        return f"`{path}` cannot be used as a file name: {getattr(exc, 'strerror', None) or exc}"
    try:
        with target.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return f"cannot read `{path}`: {exc.strerror}"
    if _sniff(head) is None:
        return f"`{path}` is not a JPEG, PNG or WebP image (whatever its name says)"
    return None


def located_images(issue: BaseModel) -> Iterator[tuple[Loc, Any]]:
    """(YAML location, image) of every `Image` in a validated issue, in file order."""
    from newsletter.content.model import Image

    def walk(obj: Any, loc: Loc) -> Iterator[tuple[Loc, Any]]:
        if isinstance(obj, Image):
            yield loc, obj
        elif isinstance(obj, BaseModel):
            for name, info in type(obj).model_fields.items():
                yield from walk(getattr(obj, name), (*loc, info.alias or name))
        elif isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from walk(item, (*loc, i))

    return walk(issue, ())
