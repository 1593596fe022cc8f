"""Local images (`image: url: bilder/kongress.jpg`) made ready for the mail and the archive.

Three steps, so that rendering stays cheap (docs/images.md):

- `plan_images` (every render): for each local image, where it is shown (its box, by where it
  stands in the issue: `templates.IMAGE_BOX`), the size of the file to write (twice the box,
  never upscaled, EXIF orientation applied), its format and its content-addressed name. Reads
  the file's header and hashes its bytes, once per file version (cached by mtime and size).
- `localised` (every render): the issue with those images' `url` pointing into the archive
  (`{base_url}/archive/<slug>/<name>`) and `width`/`height` the size they are shown at.
- `write_images` (`build`, the preview): decode, rotate, convert to sRGB, resize, and save
  without metadata (no EXIF, GPS, XMP or ICC profile); skipped when the file is there already.

Pillow is imported only when an issue has a local image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from newsletter.content.images import file_problem, is_local, located_images, resolve
from newsletter.content.model import Image
from newsletter.content.source import Loc, dotted
from newsletter.errors import IssueInvalid, NewsletterError, Problem
from newsletter.render.templates import IMAGE_BOX

if TYPE_CHECKING:
    from newsletter.content.validate import LoadedIssue

PROCESS_VERSION = 1  # part of every name: raise it when the processing changes
DENSITY = 2  # pixels of the file per pixel shown (sharp on high-density screens)
JPEG_QUALITY = 82
SIZE_WARN = 200_000  # bytes of one image after resizing: `newsletter check` warns above
HASH_LENGTH = 12
# Larger sources are refused: decoding one costs gigabytes and seconds (and inside `serve`, for a
# scheduled send, the server's memory). 50 Mpx is well above any camera a city office uses.
MAX_PIXELS = 50_000_000
# The names `write_images` gives (= newsletter.web.archive's `IMAGE_NAME`).
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}-[0-9a-f]{12}\.(?:jpg|png)")
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class LocalImage:
    """One local image of an issue, as the mail shows it and the archive holds it."""

    loc: Loc  # where the image is in the issue file (its `url` is at (*loc, "url"))
    path: str  # as written in the issue
    source: Path
    box: int  # the width of the place it stands in, px
    name: str  # its file name in the issue's archive folder
    format: str  # of the written file: "JPEG" or "PNG"
    width: int  # pixel size of the written file
    height: int
    shown: tuple[int, int]  # the size it is shown at (the <img> width and height)
    orientation: int = 1  # the source's EXIF orientation (applied)
    warning: str | None = None  # explicit width/height that do not fit the file's proportions
    digest: str = ""  # SHA-256 of the source's bytes the name was made from


@dataclass(frozen=True)
class _Source:
    digest: str
    format: str  # of the source: JPEG, PNG or WEBP
    width: int  # as shown: EXIF orientation applied
    height: int
    orientation: int
    alpha: bool  # has (some) transparency


def display_box(loc: Loc) -> int:
    """The width an image at `loc` is shown at (the packaged templates' layout)."""
    if len(loc) >= 2 and loc[-2] == "gallery":
        return IMAGE_BOX["gallery"]
    if "events" in loc:
        return IMAGE_BOX["event"]
    return IMAGE_BOX["full"]


# --------------------------------------------------------------------------- plan


def plan_images(loaded: LoadedIssue, root: Path) -> tuple[LocalImage, ...]:
    """The local images of an issue, in file order. Raises `IssueInvalid` with FILE:LINE:COL of
    every image whose file is missing, outside `root`, or cannot be read as an image."""
    images: list[LocalImage] = []
    problems: list[Problem] = []
    for loc, image in located_images(loaded.issue):
        if not is_local(image.url):
            continue
        message = file_problem(image.url, loaded.path, root)
        if message is None:
            try:
                images.append(_plan(loc, image, resolve(image.url, loaded.path)))
            except _Unreadable as exc:
                message = f"`{image.url}` cannot be read as an image: {exc}"
        if message is not None:
            line, col = loaded.source.locate((*loc, "url"))
            problems.append(Problem(str(loaded.path), line, col, dotted((*loc, "url")), message))
    if problems:
        raise IssueInvalid(problems=problems)
    return tuple(images)


class _Unreadable(Exception):
    pass


def _plan(loc: Loc, image: Image, source: Path) -> LocalImage:
    stat = source.stat()
    info = _measure(str(source), stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
    box = display_box(loc)
    # An explicit width is the most the image is shown at (a logo smaller than the column).
    shown_width = min(box, image.width or box, info.width)
    width = min(DENSITY * shown_width, info.width)
    height = max(1, round(info.height * width / info.width))
    shown = (shown_width, max(1, round(info.height * shown_width / info.width)))
    out_format = "PNG" if info.format == "PNG" or (info.format == "WEBP" and info.alpha) else "JPEG"
    params = f"v{PROCESS_VERSION}|{out_format}|{width}x{height}|q{JPEG_QUALITY}"
    digest = hashlib.sha256(f"{info.digest}|{params}".encode()).hexdigest()[:HASH_LENGTH]
    stem = re.sub(r"[^a-z0-9]+", "-", source.stem.lower()).strip("-")[:40].strip("-") or "bild"
    warning = None
    if image.width and image.height and abs(image.height - image.width * info.height / info.width) > 1:
        warning = (f"`width: {image.width}` and `height: {image.height}` do not fit the proportions "
                   f"of `{image.url}` ({info.width}×{info.height} px, upright); it is shown at "
                   f"{shown[0]}×{shown[1]} px. Leave `width` and `height` out: `build` measures them")
    return LocalImage(loc=loc, path=image.url, source=source, box=box,
                      name=f"{stem}-{digest}.{_EXTENSIONS[out_format]}", format=out_format,
                      width=width, height=height, shown=shown, orientation=info.orientation,
                      warning=warning, digest=info.digest)


@lru_cache(maxsize=256)
def _measure(path: str, mtime_ns: int, ctime_ns: int, size: int) -> _Source:
    """Hash, format, upright size and transparency of one version of a file (decodes only a
    WebP with an alpha channel, to see whether anything in it is transparent)."""
    from PIL import Image as Pillow
    from PIL import UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
        with warnings.catch_warnings():  # Pillow's "decompression bomb" warning is an error here
            warnings.simplefilter("error", Pillow.DecompressionBombWarning)
            opened = Pillow.open(io.BytesIO(data))
        with opened as im:
            if im.width * im.height > MAX_PIXELS:
                raise _Unreadable(f"it has {im.width}×{im.height} pixels, more than "
                                  f"{MAX_PIXELS // 1_000_000} megapixels; scale it down first")
            kind = "JPEG" if im.format == "MPO" else im.format  # MPO: a camera's multi-picture JPEG
            if kind not in ("JPEG", "PNG", "WEBP"):
                raise _Unreadable(f"a {kind} file, not a JPEG, PNG or WebP image")
            orientation = _orientation(im)
            width, height = im.size
            if orientation in (5, 6, 7, 8):  # stored on its side
                width, height = height, width
            alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
            if alpha and kind == "WEBP":
                alpha = im.getchannel("A").getextrema()[0] < 255
    except (UnidentifiedImageError, Pillow.DecompressionBombError, Pillow.DecompressionBombWarning,
            OSError, SyntaxError) as exc:
        raise _Unreadable(str(exc) or type(exc).__name__) from None
    return _Source(hashlib.sha256(data).hexdigest(), kind, width, height, orientation, alpha)


def _orientation(im: Any) -> int:
    from PIL import ExifTags

    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except (SyntaxError, ValueError, OSError):  # broken EXIF: taken as upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --------------------------------------------------------------------------- localise


def localised(issue: Any, images: Sequence[LocalImage], folder_url: str) -> Any:
    """`issue` (validated, unchanged) with each planned image pointing at `folder_url` + its
    name, `width`/`height` the size it is shown at. A copy without validation."""
    by_loc = {image.loc: image for image in images}

    def swap(obj: Any, loc: Loc) -> Any:
        if isinstance(obj, Image):
            found = by_loc.get(loc)
            if found is None:
                return obj
            return obj.model_copy(update={"url": folder_url + found.name, "width": found.shown[0],
                                          "height": found.shown[1]})
        if isinstance(obj, BaseModel):
            changes = {}
            for name, info in type(obj).model_fields.items():
                value = getattr(obj, name)
                new = swap(value, (*loc, info.alias or name))
                if new is not value:
                    changes[name] = new
            return obj.model_copy(update=changes) if changes else obj
        if isinstance(obj, list):
            items = [swap(item, (*loc, i)) for i, item in enumerate(obj)]
            return items if any(a is not b for a, b in zip(items, obj, strict=True)) else obj
        return obj

    return swap(issue, ()) if by_loc else issue


# --------------------------------------------------------------------------- write


def write_images(images: Iterable[LocalImage], directory: Path) -> list[Path]:
    """Write each image into `directory` (atomically: a temporary file renamed), unless a file
    of its name is there already (the name changes with the source and the processing)."""
    written: dict[str, Path] = {}
    for image in images:
        target = directory / image.name
        if image.name in written:
            continue
        written[image.name] = target
        if target.is_file():
            continue
        data = encode(image)
        temporary = directory / f".{image.name}.{os.getpid()}.tmp"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(data)
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise NewsletterError(f"{target}: cannot write the image: {exc.strerror}") from None
    return list(written.values())


def encoded_size(image: LocalImage, directory: Path | None = None) -> int:
    """Bytes of the written image: the file in `directory` if it is there, else encoded here."""
    if directory is not None and (directory / image.name).is_file():
        return (directory / image.name).stat().st_size
    return _size_of(image)


@lru_cache(maxsize=64)
def _size_of(image: LocalImage) -> int:
    return len(encode(image))


def encode(image: LocalImage) -> bytes:
    """The bytes of the file to write: upright, sRGB, resized, no metadata."""
    from PIL import Image as Pillow
    from PIL import ImageOps

    try:
        data = image.source.read_bytes()
        # The bytes the name was made from, or the file would be written under a name (cached
        # for a year) that promises other pixels.
        if image.digest and hashlib.sha256(data).hexdigest() != image.digest:
            raise NewsletterError(f"{image.source}: the file changed while it was being processed; "
                                  "run the command again")
        with Pillow.open(io.BytesIO(data)) as im:
            stored = (image.height, image.width) if image.orientation in (5, 6, 7, 8) else (
                image.width, image.height)
            im.draft(im.mode, stored)  # a JPEG decodes at 1/2, 1/4 or 1/8 size where that suffices
            upright = ImageOps.exif_transpose(im)
            pixels = _convert(_srgb(upright), keep_alpha=image.format == "PNG")
    except (Pillow.DecompressionBombError, OSError, SyntaxError) as exc:
        raise NewsletterError(f"{image.source}: cannot read the image: {exc}") from None
    if pixels.size != (image.width, image.height):
        pixels = pixels.resize((image.width, image.height), Pillow.Resampling.LANCZOS)
    pixels.info = {}  # nothing of the source's metadata goes along (EXIF, GPS, XMP, ICC, text)
    out = io.BytesIO()
    if image.format == "JPEG":
        pixels.save(out, "JPEG", quality=JPEG_QUALITY, progressive=True, optimize=True)
    else:
        pixels.save(out, "PNG", optimize=True)
    return out.getvalue()


def _srgb(im: Any) -> Any:
    """`im` in sRGB if it carries another colour profile (a phone's Display P3, Adobe RGB), so
    that dropping the profile keeps its colours; unchanged if the profile cannot be used."""
    profile = im.info.get("icc_profile")
    if not profile or im.mode not in ("RGB", "RGBA", "CMYK"):
        return im
    from PIL import ImageCms

    try:
        return ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                         ImageCms.createProfile("sRGB"),
                                         outputMode="RGBA" if im.mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im


def _convert(im: Any, *, keep_alpha: bool) -> Any:
    """RGB or greyscale, with an alpha channel where the output keeps one (PNG)."""
    from PIL import Image as Pillow

    if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit greyscale
        im = im.point(lambda value: value / 256).convert("L")
    alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
    if keep_alpha and alpha:
        return im if im.mode in ("RGBA", "LA") else im.convert("RGBA")
    if im.mode in ("RGB", "L"):
        return im
    if not alpha:
        return im.convert("RGB")
    # A JPEG has no transparency: what was transparent becomes white.
    rgba = im.convert("RGBA")
    background = Pillow.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
