"""Links that outlive their subscriber, the unsubscribe page's states, test-send links and what
`/archive/` may serve — against the real server of test_serve."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import test_serve
from itsdangerous import URLSafeSerializer
from test_serve import Served, ServeFactory

from newsletter.audience.store import Store
from newsletter.content.validate import load_issue
from newsletter.project import open_project
from newsletter.render.archive import build_issue
from newsletter.tokens import UNSUBSCRIBE_SALT, signing_keys

# The real-server fixtures live in test_serve.py.
serve = test_serve.serve
served = test_serve.served

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


# Every test with a project runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.backends

def legacy_token(served: Served, subscriber_id: int) -> str:
    """An unsubscribe token as mailed before migration 4: `[subscriber_id, list_id]`."""
    return str(URLSafeSerializer(signing_keys(served.project), salt=UNSUBSCRIBE_SALT)
               .dumps([subscriber_id, served.list_id]))


# --- links of erased subscribers (id reuse) ---------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # SQLite reuses the id
def test_old_link_of_an_erased_subscriber_never_unsubscribes_the_next_one(served: Served) -> None:
    erased = served.add("erased@example.org")
    old_link = legacy_token(served, erased)
    served.store.forget("erased@example.org")
    newcomer = served.add("newcomer@example.org")
    assert newcomer == erased  # SQLite hands the id out again: the reason for token_id
    with served.client() as client:
        assert client.get(f"/u/{old_link}").status_code == 404
        assert client.post(f"/u/{old_link}", data=ONE_CLICK).status_code == 404
        assert client.post(f"/u/{old_link}", data={}).status_code == 404
    assert served.status(newcomer) == "subscribed"
    assert [e.action for e in served.store.history(newcomer)] == ["subscribed"]


def test_current_link_of_an_erased_subscriber_is_rejected(served: Served) -> None:
    erased = served.add("gone@example.org")
    link = served.tokens.mint_unsubscribe(served.token_id(erased), served.list_id)
    served.store.forget("gone@example.org")
    newcomer = served.add("next@example.org")
    with served.client() as client:
        assert client.post(f"/u/{link}", data=ONE_CLICK).status_code == 404
    assert served.status(newcomer) == "subscribed"


def test_links_mailed_before_the_upgrade_keep_working(project_dir: Path, serve: ServeFactory) -> None:
    """A database from before migration 4: its subscribers' old links still unsubscribe them."""
    old = Store.open(open_project(project_dir).database_url, migrate_to=3)
    news = old.create_list("news", "Stadtnachrichten")
    sid, _ = _old_member(old, "before@example.org", news.id)
    old.close()
    served = serve()  # opens the database: migration 4 runs
    with served.client() as client:
        response = client.post(f"/u/{legacy_token(served, sid)}", data=ONE_CLICK)
    assert response.status_code == 200
    assert served.status(sid) == "unsubscribed"


def _old_member(store: Store, address: str, list_id: int) -> tuple[int, None]:
    import sqlalchemy as sa

    with store.write() as conn:  # the version-3 shape, as the old code wrote it
        sid = conn.execute(sa.text(
            "INSERT INTO subscribers (email, email_key, name, attributes, created_at) "
            "VALUES (:e, :e, NULL, '{}', '2026-01-01 10:00:00') RETURNING id"), {"e": address}).scalar()
        conn.execute(sa.text(
            "INSERT INTO memberships (subscriber_id, list_id, status, created_at, updated_at) "
            "VALUES (:s, :l, 'subscribed', '2026-01-01 10:00:00', '2026-01-01 10:00:00')"),
            {"s": sid, "l": list_id})
    return int(sid), None


# --- the unsubscribe page for people who already receive nothing ------------------------------


def test_bounced_and_complained_members_are_not_told_they_unsubscribed(served: Served) -> None:
    reasons = {"bounced": "Zustellung", "complained": "unerwünscht"}
    for status, reason in reasons.items():
        sid = served.add(f"{status}@example.org")
        served.store.set_status(sid, served.list_id, status, "bounce" if status == "bounced" else "complaint")
        before = served.store.history(sid)
        token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
        with served.client() as client:
            page = client.get(f"/u/{token}")
            button = client.post(f"/u/{token}", data={})
            one_click = client.post(f"/u/{token}", data=ONE_CLICK)
        assert page.status_code == button.status_code == one_click.status_code == 200
        assert "<button" not in page.text and reason in page.text
        for response in (button, one_click):
            assert "abgemeldet" not in response.text, status
            assert reason in response.text and "nichts geändert" in response.text
            assert "wieder anmelden" not in response.text
        assert served.status(sid) == status
        assert served.store.history(sid) == before


# --- test sends ---------------------------------------------------------------------------------


def test_the_test_send_link_shows_a_page_and_changes_nothing(served: Served) -> None:
    sid = served.add("reader@example.org")
    with served.client() as client:
        page = client.get("/u/test")
        post = client.post("/u/test", data=ONE_CLICK)
    for response in (page, post):
        assert response.status_code == 200
        assert "Testversand – in einer echten Ausgabe würden Sie sich hier abmelden" in response.text
    assert served.status(sid) == "subscribed"


# --- the archive: an allow-list ---------------------------------------------------------------


def test_archive_serves_only_the_public_files_of_a_build(served: Served) -> None:
    project = served.project
    result = build_issue(load_issue(project.root / "issues" / "2026-02.yaml"), project)
    slug = result.rendered.slug
    dist = project.dist_dir
    assert result.rendered.ics, "the example issue has events"
    # What must never be served: the e-mail parts (placeholder), build metadata, dry runs, junk.
    (dist / slug / "dry-run").mkdir()
    (dist / slug / "dry-run" / "000001-anna@example.org.eml").write_text("To: anna@example.org\n")
    (dist / "outbox.eml").write_text("To: bernd@example.org\n")
    (dist / "notes.txt").write_text("intern")
    (dist / "junk").mkdir()
    (dist / "junk" / "index.html").write_text("not built by newsletter build")
    with served.client() as client:
        hidden = [f"/archive/{slug}/email.html", f"/archive/{slug}/email.txt", f"/archive/{slug}/issue.json",
                  f"/archive/{slug}/dry-run/", f"/archive/{slug}/dry-run/000001-anna@example.org.eml",
                  "/archive/outbox.eml", "/archive/notes.txt", "/archive/junk/", "/archive/junk/index.html",
                  f"/archive/{slug}/../notes.txt", "/archive/%2e%2e/newsletter.toml",
                  f"/archive/{slug}/%2e%2e/notes.txt", "/archive/.newsletter-secret"]
        for path in hidden:
            response = client.get(path)
            assert response.status_code == 404, path
            assert "anna@" not in response.text and "%%UNSUBSCRIBE" not in response.text
        public = {
            "/archive/": "text/html", "/archive/index.html": "text/html",
            "/archive/feed.xml": "application/atom+xml",
            f"/archive/{slug}/": "text/html", f"/archive/{slug}/index.html": "text/html",
            **{f"/archive/{slug}/{name}": "text/calendar" for name in result.rendered.ics},
        }
        for path, media_type in public.items():
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(media_type), path
            assert "%%UNSUBSCRIBE_URL%%" not in response.text
        assert client.get(f"/archive/{slug}").headers["location"] == f"/archive/{slug}/"


def test_archive_without_a_build_is_404(served: Served) -> None:
    with httpx.Client(base_url=served.url) as client:
        assert client.get("/archive/").status_code == 404
        assert client.get("/archive/feed.xml").status_code == 404
