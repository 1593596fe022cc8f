"""The preference centre (`/p/<token>`) against a real `newsletter serve` on 127.0.0.1, on SQLite
and PostgreSQL: topics, name, pause, the data (page and JSON), the erasure with its confirmation,
tokens and CSRF; GET changes nothing."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import test_serve
from markupsafe import escape
from test_serve import Served, ServeFactory, csrf_of

from newsletter.audience.addresses import suppression_hash
from newsletter.audience.preferences import Preferences, add_months
from newsletter.audience.tables import consent_log, memberships, subscribers
from newsletter.delivery.tables import deliveries, sends
from newsletter.tokens import Tokens, preferences_url
from newsletter.web.preferences import EXPORT_PARTS

pytestmark = pytest.mark.backends

# The real-server fixtures live in test_serve.py.
serve = test_serve.serve

TOPICS = ('\n[topics.news]\nverkehr = "Verkehr und Mobilität"\nbildung = "Bildung & Schule"\n'
          'kultur = "Kultur"\n')


@pytest.fixture
def served(project_dir: Path, serve: ServeFactory) -> Served:
    with (project_dir / "newsletter.toml").open("a", encoding="utf-8") as toml:
        toml.write(TOPICS)
    return serve()


def member(served: Served, address: str = "anna@example.org", name: str | None = None) -> tuple[int, str]:
    """(subscriber id, the path of their preference page)."""
    sid, _ = served.store.add_subscriber(address, served.list_id, confirmed=True, name=name)
    token = served.tokens.mint_preferences(served.token_id(sid))
    return sid, "/p/" + token


def row(served: Served, sid: int) -> Any:
    with served.store.read() as conn:
        return conn.execute(sa.select(memberships).where(memberships.c.subscriber_id == sid)).one()


def snapshot(served: Served, sid: int) -> tuple[Any, ...]:
    """Everything a change would touch."""
    with served.store.read() as conn:
        person = conn.execute(sa.select(subscribers).where(subscribers.c.id == sid)).one()
        log = conn.execute(sa.select(consent_log).where(consent_log.c.subscriber_id == sid)).all()
    return tuple(person), tuple(row(served, sid)), tuple(map(tuple, log))


def post(client: httpx.Client, path: str, **data: Any) -> httpx.Response:
    """A form of the page at `path`, posted with the page's own CSRF token."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    return client.post(path, data={"csrf": csrf_of(page), **data})


def test_page_shows_lists_topics_pause_name_and_links(served: Served) -> None:
    _sid, path = member(served, name="Anna <Berg>")
    with served.client() as client:
        page = client.get(path)
    assert page.status_code == 200
    text = page.text
    assert '<html lang="de">' in text and "<h1>Ihre Newsletter-Einstellungen</h1>" in text
    assert "Stadtnachrichten" in text  # the list's title
    assert "<legend>Themen, die Sie interessieren</legend>" in text
    assert "Bildung &amp; Schule" in text and text.count('type="checkbox"') == 3
    assert text.count('name="months"') == 3 and "6 Monate" in text
    assert 'value="Anna &lt;Berg&gt;"' in text
    assert f'href="{path}/daten"' in text and f'href="{path}/export.json"' in text
    assert f'href="{path}/loeschen"' in text
    assert "<script" not in text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"


def test_choosing_topics_is_stored_and_logged(served: Served) -> None:
    sid, path = member(served)
    with served.client() as client:
        answer = post(client, path, change="topics", list=str(served.list_id), topic=["kultur", "verkehr"])
        assert answer.status_code == 303
        assert answer.headers["location"] == f"{path}?ok=topics"
        page = client.get(answer.headers["location"])
    assert "Ihre Themenauswahl ist gespeichert." in page.text
    assert re.search(r'value="kultur"[^>]*checked', page.text)
    assert not re.search(r'value="bildung"[^>]*checked', page.text)
    assert row(served, sid).topics == ["verkehr", "kultur"]  # the configuration's order
    last = served.store.history(sid)[-1]
    assert (last.action, last.source, last.ip, last.list_id) == ("subscribed", "preferences", "127.0.0.1",
                                                                  served.list_id)
    assert last.detail == "topics chosen: verkehr, kultur"

    with served.client() as client:  # unknown keys are ignored; none chosen = everything
        post(client, path, change="topics", list=str(served.list_id), topic=["unbekannt"])
    assert row(served, sid).topics is None
    assert served.store.history(sid)[-1].detail == "topics: all (no choice)"
    entries = len(served.store.history(sid))
    with served.client() as client:  # all of them: also "everything", no change, no entry
        post(client, path, change="topics", list=str(served.list_id), topic=["verkehr", "bildung", "kultur"])
    assert row(served, sid).topics is None
    assert len(served.store.history(sid)) == entries


@pytest.mark.parametrize("name", ['<b>Ännchen</b> "von" & Thoß', "Zoë Ødegård-Ñúñez"])
def test_rename_keeps_special_characters(served: Served, name: str) -> None:
    sid, path = member(served, name="Alt")
    with served.client() as client:
        answer = post(client, path, change="name", name=f"  {name} ")
        assert answer.status_code == 303
        page = client.get(answer.headers["location"])
    assert served.store.subscriber(sid).name == name  # type: ignore[union-attr]
    assert f'value="{escape(name)}"' in page.text and "Ihr Name ist gespeichert." in page.text
    last = served.store.history(sid)[-1]
    assert (last.source, last.detail) == ("preferences", f"name set to {name!r} (was 'Alt')")


@pytest.mark.parametrize("bad", ["Anna\nBcc: x@example.org", "A" * 101])
def test_a_name_clean_name_refuses_is_a_field_error(served: Served, bad: str) -> None:
    sid, path = member(served, name="Anna")
    before = snapshot(served, sid)
    with served.client() as client:
        answer = post(client, path, change="name", name=bad)
    assert answer.status_code == 400
    assert 'aria-invalid="true" aria-describedby="name-error"' in answer.text
    assert 'id="name-error"' in answer.text and "höchstens 100 Zeichen" in answer.text
    assert snapshot(served, sid) == before


def test_pause_three_months_and_resume(served: Served) -> None:
    sid, path = member(served)
    with served.client() as client:
        answer = post(client, path, change="pause", list=str(served.list_id), months="3")
        assert answer.status_code == 303
        page = client.get(answer.headers["location"])
    paused = row(served, sid).paused_until
    expected = add_months(datetime.now(UTC), 3)
    assert abs(paused - expected) < timedelta(hours=1)
    assert timedelta(days=88) <= paused - datetime.now(UTC) <= timedelta(days=93)
    assert row(served, sid).status == "subscribed"
    assert f"pausiert bis {paused:%d.%m.%Y}" in page.text and "Newsletter fortsetzen" in page.text
    assert served.store.history(sid)[-1].detail.startswith("paused for 3 months, until ")
    with served.client() as client:
        assert post(client, path, change="pause", list=str(served.list_id), months="2").status_code == 400
        answer = post(client, path, change="resume", list=str(served.list_id))
    assert answer.status_code == 303 and row(served, sid).paused_until is None
    assert served.store.history(sid)[-1].detail.startswith("pause ended")


def test_add_months_keeps_to_the_calendar() -> None:
    assert add_months(datetime(2026, 1, 31, 12, tzinfo=UTC), 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 15, tzinfo=UTC), 3) == datetime(2027, 2, 15, tzinfo=UTC)


def test_export_json_and_data_page(served: Served) -> None:
    sid, path = member(served, address="dora@example.org", name="Dora <&> Ünal")
    with served.store.write() as conn:
        conn.execute(subscribers.update().where(subscribers.c.id == sid)
                     .values(attributes={"Kommune": "<Jena>", "Rolle": "Verwaltung"}))
    with served.client() as client:
        post(client, path, change="topics", list=str(served.list_id), topic=["bildung"])
        download = client.get(f"{path}/export.json")
        page = client.get(f"{path}/daten")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/json")
    assert download.headers["content-disposition"] == 'attachment; filename="newsletter-daten.json"'
    data = json.loads(download.content)
    assert data["subscriber"] == {"email": "dora@example.org", "name": "Dora <&> Ünal",
                                  "attributes": {"Kommune": "<Jena>", "Rolle": "Verwaltung"},
                                  "created_at": data["subscriber"]["created_at"]}
    [membership] = data["memberships"]
    assert (membership["list"], membership["status"], membership["topics"]) == (
        "news", "subscribed", ["bildung"])
    assert [(e["action"], e["source"]) for e in data["consent_log"]] == [("subscribed", "cli"),
                                                                          ("subscribed", "preferences")]
    assert data["deliveries"] == [] and data["feedback_events"] == []
    assert page.status_code == 200
    assert "Dora &lt;&amp;&gt; Ünal" in page.text and "&lt;Jena&gt;" in page.text
    assert "<Jena>" not in page.text and "Dora <&>" not in page.text
    assert "Verlauf Ihrer Einwilligungen" in page.text and "topics chosen: bildung" in page.text
    assert "Einstellungsseite" in page.text  # the source, in words


def test_export_contains_deliveries_of_the_send_journal(served: Served) -> None:
    sid, _path = member(served)
    now = datetime.now(UTC)
    with served.store.write() as conn:
        send_id = conn.execute(sends.insert().values(
            issue_slug="2026-02", list_id=served.list_id, content_hash="x", subject="Februar <Ausgabe>",
            status="finished", transport="test", created_at=now, updated_at=now)).inserted_primary_key[0]
        conn.execute(deliveries.insert().values(send_id=send_id, subscriber_id=sid, email="anna@example.org",
                                                status="sent", updated_at=now))
    data = Preferences(served.store, {}).export(sid, EXPORT_PARTS)
    assert data is not None
    [delivery] = data["deliveries"]
    assert (delivery["issue"], delivery["subject"], delivery["list"], delivery["status"]) == (
        "2026-02", "Februar <Ausgabe>", "news", "sent")


def test_delete_needs_the_confirmation_post(served: Served) -> None:
    sid, path = member(served, address="erik@example.org")
    with served.client() as client:
        ask = client.get(f"{path}/loeschen")
        assert ask.status_code == 200 and "Alle Daten löschen?" in ask.text
        assert served.store.subscriber(sid) is not None  # GET erases nothing
        refused = client.post(f"{path}/loeschen", data={})  # no CSRF token
        assert refused.status_code == 403 and served.store.subscriber(sid) is not None
        # the main page's token is for the main page's forms only
        main_csrf = csrf_of(client.get(path))
        assert client.post(f"{path}/loeschen", data={"csrf": main_csrf}).status_code == 403
        done = client.post(f"{path}/loeschen", data={"csrf": csrf_of(ask)})
        assert done.status_code == 200 and "Ihre Daten sind gelöscht" in done.text
        assert served.store.subscriber(sid) is None
        assert served.store.find_subscriber("erik@example.org") is None
        assert served.store.is_suppressed("erik@example.org")
        with served.store.read() as conn:
            assert conn.execute(sa.select(consent_log).where(consent_log.c.subscriber_id == sid)).all() == []
        for url in (path, f"{path}/daten", f"{path}/export.json", f"{path}/loeschen"):
            gone = client.get(url)
            assert gone.status_code == 410 and "Keine Daten mehr vorhanden" in gone.text
            assert "erik@example.org" not in gone.text
        assert client.post(path, data={"csrf": main_csrf, "change": "name", "name": "X"}).status_code == 410
    assert suppression_hash("erik@example.org")  # the entry is kept as a hash only


def test_tampered_and_foreign_tokens_answer_400(served: Served) -> None:
    sid, path = member(served)
    token = path.removeprefix("/p/")
    payload, signature = token.rsplit(".", 1)
    unsubscribe = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    other_key = Tokens(["another key"]).mint_preferences(served.token_id(sid))
    bad = [f"{payload}.{signature[:-2]}xx", f"{payload}x.{signature}", unsubscribe, other_key, "x.y"]
    with served.client() as client:
        # `/p/test` is the link in test sends: a page saying so, nothing changes.
        for method in ("GET", "POST"):
            answer = client.request(method, "/p/test")
            assert answer.status_code == 200 and "Testversand" in answer.text
        for value in [*bad, "test"]:
            for sub in ("/daten", "/export.json", "/loeschen"):
                url = f"/p/{value}{sub}"
                answer = client.get(url)
                assert answer.status_code == 400, url
                assert "Ungültiger Link" in answer.text
        for value in bad:
            answer = client.get(f"/p/{value}")
            assert answer.status_code == 400 and "Ungültiger Link" in answer.text, value
            assert client.post(f"/p/{value}", data={"change": "name", "name": "x"}).status_code == 400
            assert client.post(f"/p/{value}/loeschen", data={}).status_code == 400
    assert served.store.subscriber(sid) is not None


def test_posts_without_csrf_are_refused(served: Served) -> None:
    sid, path = member(served)
    before = snapshot(served, sid)
    with served.client() as client:
        client.get(path)  # the cookie, but no token in the form
        for data in ({"change": "name", "name": "Mallory"},
                     {"change": "topics", "list": str(served.list_id), "topic": "verkehr"},
                     {"change": "pause", "list": str(served.list_id), "months": "6"}):
            assert client.post(path, data=data).status_code == 403
        # a token from the page, but a cross-site post
        page = client.get(path)
        cross = client.post(path, data={"csrf": csrf_of(page), "change": "name", "name": "Mallory"},
                            headers={"sec-fetch-site": "cross-site"})
        assert cross.status_code == 403
    with served.client() as other:  # a token without the cookie it belongs to
        stolen = other.post(path, data={"csrf": csrf_of(page), "change": "name", "name": "M"})
        assert stolen.status_code == 403
    assert snapshot(served, sid) == before


def test_get_never_changes_anything(served: Served) -> None:
    sid, path = member(served)
    before = snapshot(served, sid)
    with served.client() as client:
        for url in (path, f"{path}?ok=topics", f"{path}?change=name&name=X", f"{path}/daten",
                    f"{path}/export.json", f"{path}/loeschen"):
            for _ in range(2):  # link scanners open links more than once
                assert client.get(url).status_code == 200
    assert snapshot(served, sid) == before


def test_changes_of_a_list_the_member_left_are_refused(served: Served) -> None:
    sid, path = member(served)
    served.store.unsubscribe("anna@example.org")
    before = snapshot(served, sid)
    with served.client() as client:
        page = client.get(path)
        assert "abgemeldet" in page.text and 'name="months"' not in page.text
        answer = client.post(path, data={"csrf": csrf_of(page), "change": "pause",
                                         "list": str(served.list_id), "months": "1"})
        assert answer.status_code == 400
        other = client.post(path, data={"csrf": csrf_of(page), "change": "topics", "list": "99999"})
        assert other.status_code == 400
    assert snapshot(served, sid) == before


def test_the_token_never_reaches_the_log(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    _sid, path = member(served)
    token = path.removeprefix("/p/")
    caplog.set_level(logging.INFO, logger="newsletter.access")
    with served.client() as client:
        post(client, path, change="name", name="Neu")
        client.get(f"{path}/daten")
        client.get(f"{path}/loeschen")
    lines = [r.getMessage() for r in caplog.records if r.name == "newsletter.access"]
    assert any(line.startswith("POST /p/… 303") for line in lines), lines
    assert any(line.startswith("GET /p/…/daten 200") for line in lines), lines
    assert not any(token in line for line in lines)


def test_preferences_url_and_token() -> None:
    tokens = Tokens(["new key", "old key"])
    made_with_old = Tokens(["old key"]).mint_preferences("abcdefghijklmnop")
    assert tokens.read_preferences(made_with_old) == "abcdefghijklmnop"  # old keys are accepted
    assert tokens.read_preferences(tokens.mint_preferences("abcdefghijklmnop")) == "abcdefghijklmnop"
    assert preferences_url("https://news.example.org/", "T") == "https://news.example.org/p/T"
    with pytest.raises(TypeError):
        tokens.mint_preferences(7)  # type: ignore[arg-type]


def test_every_code_has_its_own_words(project: Any) -> None:
    from newsletter.audience.statuses import SOURCES, STATUSES
    from newsletter.web.pages import Pages
    from newsletter.web.preferences import NAME_INVALID, SAVED

    module = Pages(project).env.get_template("web/preferences_messages.html").module
    saved = [str(module.saved_message(code)) for code in SAVED]  # type: ignore[attr-defined]
    assert len(set(saved)) == len(SAVED) and not set(saved) & set(SAVED)
    assert str(module.field_error(NAME_INVALID)) != NAME_INVALID  # type: ignore[attr-defined]
    statuses = {str(module.status_text(s)) for s in STATUSES}  # type: ignore[attr-defined]
    assert len(statuses) == len(STATUSES) and not statuses & set(STATUSES)
    sources = {str(module.source_text(s)) for s in SOURCES}  # type: ignore[attr-defined]
    assert len(sources) == len(SOURCES) and not sources & set(SOURCES)


def test_a_project_overrides_the_pages(project_dir: Path, serve: ServeFactory) -> None:
    (project_dir / "templates" / "web").mkdir(parents=True, exist_ok=True)
    (project_dir / "templates" / "web" / "preferences_deleted.html").write_text(
        '{% extends "default:web/preferences_deleted.html" %}'
        '{% block content %}<h1>Erledigt</h1><p>Auf Wiedersehen aus Musterstadt.</p>{% endblock %}',
        encoding="utf-8")
    served = serve()
    _sid, path = member(served)
    with served.client() as client:
        done = post(client, f"{path}/loeschen")
    assert done.status_code == 200 and "Auf Wiedersehen aus Musterstadt." in done.text
