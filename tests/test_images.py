"""Local images (`image: url: bilder/kongress.jpg`): checked by validate, resized and stripped by
build, referred to under `{base_url}/archive/<slug>/`, served by serve and the preview, and
weighed by check. The image files are made here with Pillow (docs/images.md)."""

from __future__ import annotations

import io
import random
import re
import shutil
from pathlib import Path

import httpx
import lxml.html
import pytest
import test_serve
from PIL import ExifTags, ImageCms
from PIL import Image as Pillow
from test_preview_server import wait_for_state
from test_send_support import outbox_parts
from test_serve import Served, ServeFactory
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.errors import IssueInvalid
from newsletter.project import open_project
from newsletter.render import images as images_module
from newsletter.render.images import NAME, SIZE_WARN
from newsletter.render.templates import IMAGE_BOX
from newsletter.web.archive import IMAGE_NAME
from newsletter.web.preview import create_preview_app, serve_in_background

# The real-server fixtures live in test_serve.py.
serve = test_serve.serve

RED, BLUE = (220, 30, 30), (30, 30, 220)
ISSUE = """\
subject: Bilder aus dem Rathaus
preheader: Lokale Bilder im Newsletter
date: 2026-03-10
sections:
  - kind: digest
    heading: Neues
    items:
      - headline: Kongress
        body: Ein Bild vom Kongress.
        image:
          url: {kongress}
          alt: Menschen im Saal des Kongresses
  - kind: events
    heading: Termine
    events:
      - title: Workshop
        date: 2026-04-28
        image:
          url: bilder/workshop.webp
          alt: Ein Tisch mit Laptops
  - kind: article
    heading: Bericht
    blocks:
      - text: Ein Bericht.
    gallery:
      - url: bilder/wappen.png
        alt: Das Wappen der Stadt
        credit: ©Stadt Jena
      - url: bilder/glas.webp
        alt: Ein Glas Wasser vor dem Rathaus
"""
# Where the first image's `url:` value stands in ISSUE (line, column).
KONGRESS_AT = (11, 16)


def camera_exif(orientation: int = 1) -> Pillow.Exif:
    """EXIF as a phone writes it: orientation, camera, and where the photo was taken."""
    exif = Pillow.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Kamera"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (50.0, 55.0, 39.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (11.0, 35.0, 10.0)
    return exif


def portrait_jpeg(path: Path) -> None:
    """A 3000×4000 portrait photo as cameras store it: 4000×3000 on its side with EXIF
    Orientation 6 (turn 90° clockwise to view), a GPS position and an ICC profile. Stored, its
    left half is red: upright, the top is red and the bottom blue."""
    im = Pillow.new("RGB", (4000, 3000), BLUE)
    im.paste(RED, (0, 0, 2000, 3000))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im.save(path, "JPEG", quality=90, exif=camera_exif(6), icc_profile=icc)
    with Pillow.open(path) as stored:  # what the test relies on is in the file
        assert stored.size == (4000, 3000) and stored.getexif().get_ifd(ExifTags.IFD.GPSInfo)


def transparent_png(path: Path) -> None:
    """800×400, opaque red on the left, fading to fully transparent on the right; with EXIF."""
    im = Pillow.new("RGBA", (800, 400), (*RED, 255))
    alpha = Pillow.linear_gradient("L").rotate(90).resize((800, 400))
    im.putalpha(alpha.point(lambda v: 255 - v))
    im.save(path, "PNG", exif=camera_exif())


def no_metadata(path: Path) -> bool:
    with Pillow.open(path) as im:
        exif = im.getexif()
        return len(exif) == 0 and not exif.get_ifd(ExifTags.IFD.GPSInfo) and not (
            {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp"} & set(im.info))


def noisy_jpeg(path: Path, size: tuple[int, int] = (1600, 1200)) -> None:
    """Random pixels: nothing to compress, so far over 200 KB at any sensible size."""
    data = random.Random(15).randbytes(size[0] * size[1] * 3)
    Pillow.frombytes("RGB", size, data).save(path, "JPEG", quality=95)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image files, made once for the module."""
    folder = tmp_path_factory.mktemp("bilder")
    portrait_jpeg(folder / "kongress.jpg")
    transparent_png(folder / "wappen.png")
    Pillow.new("RGB", (1000, 500), BLUE).save(folder / "workshop.webp", "WEBP", exif=camera_exif())
    Pillow.new("RGBA", (600, 600), (*BLUE, 128)).save(folder / "glas.webp", "WEBP", lossless=True)
    noisy_jpeg(folder / "rauschen.jpg")
    (folder / "notiz.jpg").write_text("Das ist kein Bild.\n", encoding="utf-8")
    return folder


def write_issue(project_dir: Path, sources: Path, kongress: str = "bilder/kongress.jpg",
                text: str = ISSUE) -> Path:
    """issues/2026-03.yaml with its images in issues/bilder/."""
    shutil.copytree(sources, project_dir / "issues" / "bilder", dirs_exist_ok=True)
    path = project_dir / "issues" / "2026-03.yaml"
    path.write_text(text.format(kongress=kongress), encoding="utf-8")
    return path


def cli(project_dir: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--project", str(project_dir)])


def built(project_dir: Path, issue: Path) -> tuple[dict[str, Path], lxml.html.HtmlElement]:
    """Build through the CLI: the written images by source file name, and the email's HTML."""
    result = cli(project_dir, "build", str(issue))
    assert result.exit_code == 0, result.output
    folder = project_dir / "dist" / "2026-03"
    doc = lxml.html.fromstring((folder / "email.html").read_text(encoding="utf-8"))
    names = [img.get("src").rsplit("/", 1)[1] for img in doc.iter("img") if NAME.search(img.get("src"))]
    return {name.rsplit("-", 1)[0]: folder / name for name in names}, doc


def img_of(doc: lxml.html.HtmlElement, name: str) -> lxml.html.HtmlElement:
    (img,) = [i for i in doc.iter("img") if i.get("src", "").endswith("/" + name)]
    return img


# --------------------------------------------------------------------------- build


def test_build_writes_resized_upright_images_without_metadata(project_dir: Path, sources: Path) -> None:
    issue = write_issue(project_dir, sources)
    files, doc = built(project_dir, issue)
    assert sorted(files) == ["glas", "kongress", "wappen", "workshop"]
    base = "http://127.0.0.1:8000/archive/2026-03/"  # the project's base_url

    # The portrait photo: full width (552 px) shown, twice that in the file, upright.
    jpeg = files["kongress"]
    assert jpeg.suffix == ".jpg"
    with Pillow.open(jpeg) as im:
        assert im.format == "JPEG" and im.info.get("progressive") == 1
        assert im.size == (2 * IMAGE_BOX["full"], round(2 * IMAGE_BOX["full"] * 4000 / 3000))  # 1104×1472
        assert im.getpixel((im.width // 2, 20))[0] > 180  # red on top: turned as the camera meant
        assert im.getpixel((im.width // 2, im.height - 20))[2] > 180  # blue at the bottom
    assert no_metadata(jpeg)
    img = img_of(doc, jpeg.name)
    assert img.get("src") == base + jpeg.name
    assert (img.get("width"), img.get("height")) == ("552", "736")
    assert img.get("alt") == "Menschen im Saal des Kongresses"

    # The PNG with transparency stays a PNG with its alpha channel, in a gallery column.
    png = files["wappen"]
    with Pillow.open(png) as im:
        assert png.suffix == ".png" and im.format == "PNG" and im.mode == "RGBA"
        assert im.size == (2 * IMAGE_BOX["gallery"], IMAGE_BOX["gallery"])  # 540×270
        assert im.getchannel("A").getextrema() == (0, 255)
    assert no_metadata(png)
    assert (img_of(doc, png.name).get("width"), img_of(doc, png.name).get("height")) == ("270", "135")

    # The WebP without transparency becomes a JPEG, beside the event's facts.
    webp = files["workshop"]
    with Pillow.open(webp) as im:
        assert webp.suffix == ".jpg" and im.format == "JPEG"
        assert im.size == (2 * IMAGE_BOX["event"], IMAGE_BOX["event"])  # 468×234
    assert no_metadata(webp)
    assert img_of(doc, webp.name).get("width") == str(IMAGE_BOX["event"])
    # A WebP with transparency becomes a PNG that keeps it.
    with Pillow.open(files["glas"]) as im:
        assert im.format == "PNG" and im.mode == "RGBA" and im.size == (540, 540)
        assert im.getchannel("A").getextrema() == (128, 128)

    # The web version refers to the same files; the text part describes the images.
    web = (project_dir / "dist" / "2026-03" / "index.html").read_text(encoding="utf-8")
    assert base + jpeg.name in web
    assert "[Bild: Menschen im Saal des Kongresses]" in (
        project_dir / "dist" / "2026-03" / "email.txt").read_text(encoding="utf-8")


def test_rebuilding_is_idempotent_and_a_changed_image_gets_a_new_name(project_dir: Path,
                                                                      sources: Path) -> None:
    issue = write_issue(project_dir, sources)
    first, _ = built(project_dir, issue)
    stamps = {name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in first.items()}
    again, _ = built(project_dir, issue)
    assert {name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in again.items()} == stamps

    source = project_dir / "issues" / "bilder" / "wappen.png"
    with Pillow.open(source) as im:
        im.transpose(Pillow.Transpose.FLIP_LEFT_RIGHT).save(source, "PNG")
    folder = project_dir / "dist" / "2026-03"
    before = {p.name for p in folder.iterdir()}
    changed, doc = built(project_dir, issue)
    assert changed["wappen"].name != first["wappen"].name
    assert changed["kongress"] == first["kongress"]
    assert img_of(doc, changed["wappen"].name) is not None
    # The old version stays: mails sent before still show it.
    assert {p.name for p in folder.iterdir()} == before | {changed["wappen"].name}
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_library_api_renders_and_a_send_writes_each_image_once(project_dir: Path, sources: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    issue_path = write_issue(project_dir, sources)
    project = open_project(project_dir)
    issue = project.issue(issue_path)
    assert issue.warnings == []  # no "without width and height": build measures local images
    encodes: list[str] = []
    real_encode = images_module.encode
    monkeypatch.setattr(images_module, "encode",
                        lambda image: encodes.append(image.name) or real_encode(image))

    rendered = issue.rendered
    kongress = rendered.images[0]
    assert (kongress.width, kongress.height, kongress.shown) == (1104, 1472, (552, 736))
    assert kongress.loc == ("sections", 0, "items", 0, "image")
    assert f'src="{rendered.web_url}{kongress.name}"' in rendered.html

    # A send prepares the message once and fills in each reader: each image is written once,
    # before the first mail that points at it, and served from dist/<slug>/ without a build.
    readers = project.store.create_list("leser")
    for address in ("anna@example.org", "bernd@example.org", "clara@example.org"):
        project.store.add_subscriber(address, readers.id, confirmed=True)
    project.send(issue_path, "leser")
    parts = outbox_parts(project)
    assert sorted(parts) == ["anna@example.org", "bernd@example.org", "clara@example.org"]
    assert all(f"{rendered.web_url}{kongress.name}" in html for _, html in parts.values())
    names = sorted(image.name for image in rendered.images)
    assert sorted(encodes) == names
    assert sorted(p.name for p in (project.dist_dir / "2026-03").iterdir()) == names

    # Build finds them written: nothing is encoded again.
    result = issue.build()
    assert sorted(encodes) == names
    assert {p.name for p in result.files} >= set(names)
    project.close()


# --------------------------------------------------------------------------- mistakes


def located(output: str, issue: Path, field: str) -> tuple[int, int, str]:
    """(line, column, message) of the problem about `field` in a command's output."""
    match = re.search(rf"{re.escape(str(issue))}:(\d+):(\d+): {re.escape(field)}: (.*)", output)
    assert match, output
    return int(match.group(1)), int(match.group(2)), match.group(3)


FIELD = "sections[0].items[0].image.url"


@pytest.mark.parametrize("command", ["validate", "check", "build", "send"])
def test_missing_file_is_an_error_at_its_position(project_dir: Path, sources: Path, command: str) -> None:
    issue = write_issue(project_dir, sources, kongress="bilder/fehlt.jpg")
    if command == "validate":
        result = CliRunner().invoke(app, ["validate", str(issue)])
    elif command == "send":
        result = cli(project_dir, "send", str(issue), "--list", "news", "--yes")
    else:
        result = cli(project_dir, command, str(issue))
    assert result.exit_code == 1
    line, col, message = located(result.output, issue, FIELD)
    assert (line, col) == KONGRESS_AT
    assert message.startswith("no such file: `bilder/fehlt.jpg`")
    assert not (project_dir / "dist" / "2026-03").exists()


@pytest.mark.parametrize(("url", "expected"), [
    ("../../../aussen.jpg", "`../../../aussen.jpg` points outside the project directory"),
    ("../../etc/passwd", "`../../etc/passwd` is not an image file: a local image must be a JPEG, PNG "
                         "or WebP file"),
    ("/etc/passwd.jpg", "`/etc/passwd.jpg` is an absolute path; write the path relative to the issue "
                        "file"),
    ("bilder/notiz.jpg", "`bilder/notiz.jpg` is not a JPEG, PNG or WebP image"),
    ("bilder/plan.pdf", "`bilder/plan.pdf` is not an image file"),
    ("example.org/bild.jpg", "no such file: `example.org/bild.jpg`"),
    ("bilder/" + "a" * 300 + ".jpg", "`bilder/aaaa"),  # too long for the file system
    ("bilder/schleife.jpg", "`bilder/schleife.jpg` cannot be used as a file name"),  # symlink loop
])
def test_paths_outside_the_project_and_files_that_are_no_images_are_refused(
        project_dir: Path, sources: Path, url: str, expected: str) -> None:
    shutil.copy(sources / "kongress.jpg", project_dir.parent / "aussen.jpg")  # exists, but outside
    issue = write_issue(project_dir, sources, kongress=url)
    folder = project_dir / "issues" / "bilder"
    (folder / "schleife.jpg").symlink_to("kreis.jpg")
    (folder / "kreis.jpg").symlink_to("schleife.jpg")
    result = CliRunner().invoke(app, ["validate", str(issue)])
    assert result.exit_code == 1
    line, col, message = located(result.output, issue, FIELD)
    assert (line, col) == KONGRESS_AT
    assert message.startswith(expected), message
    if url.startswith("example.org"):
        assert message.endswith("an image on the web needs its full address: https://example.org/bild.jpg")


@pytest.mark.parametrize("command", ["check", "build", "send"])
def test_an_image_of_too_many_pixels_is_refused_before_it_is_decoded(project_dir: Path, sources: Path,
                                                                     command: str) -> None:
    issue = write_issue(project_dir, sources, kongress="bilder/riesig.png")
    # 64 Mpx of one colour: a few KB on disk, gigabytes once decoded.
    Pillow.new("1", (8000, 8000)).save(project_dir / "issues" / "bilder" / "riesig.png")
    args = ["--list", "news", "--yes"] if command == "send" else []
    if command == "send":
        with open_project(project_dir) as project:
            news = project.store.create_list("news")
            project.store.add_subscriber("anna@example.org", news.id, confirmed=True)
    result = cli(project_dir, command, str(issue), *args)
    assert result.exit_code == 1
    line, col, message = located(result.output, issue, FIELD)
    assert (line, col) == KONGRESS_AT
    assert message == ("`bilder/riesig.png` cannot be read as an image: it has 8000×8000 pixels, "
                       "more than 50 megapixels; scale it down first")


def test_a_draft_outside_the_project_may_use_the_images_below_its_own_folder(
        project_dir: Path, sources: Path, tmp_path: Path) -> None:
    drafts = tmp_path / "entwuerfe"
    shutil.copytree(sources, drafts / "bilder")
    shutil.copy(sources / "kongress.jpg", tmp_path / "daneben.jpg")
    draft = drafts / "2026-03.yaml"
    project = open_project(project_dir)
    draft.write_text(ISSUE.format(kongress="bilder/kongress.jpg"), encoding="utf-8")
    result = project.issue(draft).build()
    assert (project.dist_dir / "2026-03" / result.rendered.images[0].name).is_file()
    draft.write_text(ISSUE.format(kongress="../daneben.jpg"), encoding="utf-8")
    with pytest.raises(IssueInvalid, match="points outside the project directory"):
        project.issue(draft)


def test_a_path_outside_the_project_is_refused_by_send_too(project_dir: Path, sources: Path) -> None:
    """The send loads the issue without its project (delivery.plan); the render refuses."""
    shutil.copy(sources / "kongress.jpg", project_dir.parent / "aussen.jpg")
    issue = write_issue(project_dir, sources, kongress="../../aussen.jpg")
    project = open_project(project_dir)
    project.store.create_list("news")
    with pytest.raises(IssueInvalid) as caught:
        project.plan_send(issue, "news")
    (problem,) = caught.value.problems
    assert (problem.line, problem.column, problem.path) == (*KONGRESS_AT, FIELD)
    assert "points outside the project directory" in problem.message
    project.close()


# --------------------------------------------------------------------------- check


def test_check_warns_about_an_image_over_200_kb(project_dir: Path, sources: Path) -> None:
    issue = write_issue(project_dir, sources, kongress="bilder/rauschen.jpg")
    result = cli(project_dir, "check", str(issue))
    assert result.exit_code == 0, result.output  # a warning
    warnings = [line for line in result.output.splitlines() if "after resizing" in line]
    assert len(warnings) == 1, result.output  # only the noise: the other images are small
    line, col, message = located(result.output, issue, f"warning: {FIELD}")
    assert (line, col) == KONGRESS_AT
    kb = int(re.search(r"has (\d+) KB after resizing to 1104×828 px", message).group(1))
    assert kb > SIZE_WARN // 1000
    # Built, check weighs the file itself.
    files, _ = built(project_dir, issue)
    assert files["rauschen"].stat().st_size == pytest.approx(kb * 1000, abs=500)


def test_explicit_size_caps_the_width_and_a_wrong_proportion_is_a_warning(project_dir: Path,
                                                                         sources: Path) -> None:
    text = ISSUE.replace("          alt: Menschen im Saal des Kongresses\n",
                         "          alt: Menschen im Saal des Kongresses\n          width: 300\n"
                         "          height: 225\n")  # the stored, sideways proportions
    issue = write_issue(project_dir, sources, text=text)
    result = cli(project_dir, "check", str(issue))
    assert result.exit_code == 0, result.output
    assert "do not fit the proportions of `bilder/kongress.jpg` (3000×4000 px, upright); it is shown " \
           "at 300×400 px" in result.output
    files, doc = built(project_dir, issue)
    with Pillow.open(files["kongress"]) as im:
        assert im.size == (600, 800)
    img = img_of(doc, files["kongress"].name)
    assert (img.get("width"), img.get("height")) == ("300", "400")


# --------------------------------------------------------------------------- serve and preview


def test_serve_delivers_the_images_of_a_built_issue(project_dir: Path, sources: Path,
                                                    serve: ServeFactory) -> None:
    assert IMAGE_NAME.pattern == NAME.pattern  # serve's allow-list knows the names build gives
    served: Served = serve()
    issue = write_issue(project_dir, sources)
    built_issue = served.project.issue(issue).build()
    jpeg, png = (image.name for image in built_issue.rendered.images if image.name.startswith(("k", "wa")))
    src = img_of(lxml.html.fromstring(built_issue.rendered.html), jpeg).get("src")
    assert src == f"{served.url}/archive/2026-03/{jpeg}"  # the mail's URL is the server's
    with httpx.Client(timeout=30) as client:
        answer = client.get(src)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/jpeg"
        assert "immutable" in answer.headers["cache-control"]
        with Pillow.open(io.BytesIO(answer.content)) as im:
            assert im.size == (1104, 1472)
        assert client.get(f"{served.url}/archive/2026-03/{png}").headers["content-type"] == "image/png"
    with served.client() as client:
        assert client.get(f"/archive/2026-03/{jpeg[:-4]}.png").status_code == 404
        assert client.get("/archive/2026-03/bilder/kongress.jpg").status_code == 404
        assert client.get(f"/archive/2026-03/..%2F2026-03%2F{jpeg}").status_code == 404
        assert client.get("/archive/2026-03/email.html").status_code == 404
    # Without a build (`send` wrote the images, no issue.json): the images are served, the rest
    # of the folder is not.
    unbuilt = project_dir / "dist" / "ungebaut"
    unbuilt.mkdir()
    shutil.copy(project_dir / "dist" / "2026-03" / jpeg, unbuilt / jpeg)
    (unbuilt / "index.html").write_text("<p>privat</p>", encoding="utf-8")
    with served.client() as client:
        assert client.get(f"/archive/ungebaut/{jpeg}").status_code == 200
        assert client.get("/archive/ungebaut/").status_code == 404
        assert client.get("/archive/ungebaut/index.html").status_code == 404


def test_preview_shows_the_images_from_the_build_folder(project_dir: Path, sources: Path) -> None:
    issue = write_issue(project_dir, sources)
    photo = project_dir / "issues" / "bilder" / "kongress.jpg"
    photo.unlink()  # not there yet when the preview starts
    project = open_project(project_dir)
    with serve_in_background(create_preview_app(project, issue)) as url:
        state = wait_for_state(url, lambda s: s["errors"] != ["rendering …"])
        assert not state["ok"]
        assert state["errors"][0].endswith(f"{FIELD}: no such file: `bilder/kongress.jpg` "
                                           f"(looked for {photo.resolve()})")
        shutil.copy(sources / "kongress.jpg", photo)  # the colleague's photo arrives
        state = wait_for_state(url, lambda s: s["ok"])
        assert state["ok"], state["errors"]
        assert not [c for c in state["checks"] if "after resizing" in c[1]]
        doc = lxml.html.fromstring(httpx.get(url + "email.html", timeout=30).text)
        sources_ = [img.get("src") for img in doc.iter("img") if NAME.search(img.get("src", ""))]
        assert len(sources_) == 4 and all(s.startswith("/archive/2026-03/") for s in sources_)
        for src in sources_:
            answer = httpx.get(url + src.lstrip("/"), timeout=30)
            assert answer.status_code == 200
            assert answer.headers["content-type"] in ("image/jpeg", "image/png")
        assert httpx.get(url + "archive/2026-03/email.html", timeout=30).status_code == 404
        assert httpx.get(url + "archive/..%2F..%2Fnewsletter.toml", timeout=30).status_code == 404
