"""`newsletter serve` against a real uvicorn server on 127.0.0.1: unsubscribe (page and
RFC 8058 one-click), double opt-in through a real SMTP server, tokens, archive."""

from __future__ import annotations

import email
import email.policy
import html
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from ports import free_port

from newsletter.audience.store import Store, open_store
from newsletter.project import Project, open_project
from newsletter.tokens import CONFIRM_SALT, Tokens, signing_keys
from newsletter.web.app import make_server
from newsletter.web.site import Site

# Every test with a project runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.backends

# --- a real server ----------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    project: Project
    store: Store
    tokens: Tokens
    list_id: int
    site: Site  # the server's own handlers and store, for tests that watch them
    sign_ups: list[str] = field(default_factory=list)  # one entry per sign-up the store finished

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30, **kwargs)

    def add(self, address: str, *, confirmed: bool = True) -> int:
        subscriber_id, _ = self.store.add_subscriber(address, self.list_id, confirmed=confirmed)
        return subscriber_id

    def token_id(self, subscriber_id: int) -> str:
        found = self.store.subscriber(subscriber_id)
        assert found is not None and found.token_id
        return found.token_id

    def status(self, subscriber_id: int) -> str | None:
        return self.store.membership_status(subscriber_id, self.list_id)

    def wait_for_sign_ups(self, count: int) -> None:
        """Until the server's store has finished `count` sign-ups: they run after the answer."""
        wait_for(lambda: len(self.sign_ups) >= count)

    def count_sign_ups(self) -> None:
        store = self.site.store
        request_subscription = store.request_subscription

        def counted(email: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return request_subscription(email, *args, **kwargs)
            finally:
                self.sign_ups.append(email)

        store.request_subscription = counted  # type: ignore[method-assign]


ServeFactory = Callable[..., Served]


@pytest.fixture
def serve(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeFactory]:
    """Start `newsletter serve` for the test project in a thread; env overrides as kwargs."""
    servers: list[tuple[Any, threading.Thread, Store]] = []

    def start(**env: str) -> Served:
        port = free_port()
        monkeypatch.setenv("NEWSLETTER_NEWSLETTER__BASE_URL", f"http://127.0.0.1:{port}")
        for key, value in env.items():
            monkeypatch.setenv(f"NEWSLETTER_{key.upper()}", value)
        project = open_project(project_dir)
        store = open_store(project)
        existing = [item for item in store.lists() if item.name == "news"]
        lst = existing[0] if existing else store.create_list("news", "Smart zu wissen – Stadtnachrichten")
        server = make_server(project, "127.0.0.1", port, log_level="warning")
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        servers.append((server, thread, store))
        served = Served(f"http://127.0.0.1:{port}", project, store, Tokens.for_project(project), lst.id,
                        server.config.app.state.site)
        served.count_sign_ups()
        return served

    yield start
    for server, thread, store in servers:
        server.should_exit = True
        thread.join(10)
        store.close()


@pytest.fixture
def served(serve: ServeFactory) -> Served:
    return serve()


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match, page.text
    return match.group(1)


def sign_up(client: httpx.Client, address: str, path: str = "/subscribe", **extra: str) -> httpx.Response:
    form = client.get(path)
    assert form.status_code == 200
    data = {"csrf": csrf_of(form), "email": address, "name": "", "consent": "1", "website": "", **extra}
    return client.post(path, data=data)


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- unsubscribe ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_one_click_unsubscribe_answers_200_without_redirect(served: Served, encoding: str) -> None:
    sid = served.add("anna@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    with served.client() as client:
        if encoding == "urlencoded":
            response = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        else:
            response = client.post(f"/u/{token}", files={"List-Unsubscribe": (None, "One-Click")})
        assert response.request.headers["content-type"].startswith(
            "application/x-www-form-urlencoded" if encoding == "urlencoded" else "multipart/form-data")
        assert "cookie" not in response.request.headers
    assert response.status_code == 200
    assert "location" not in response.headers
    assert "abgemeldet" in response.text
    assert served.status(sid) == "unsubscribed"
    last = served.store.history(sid)[-1]
    assert (last.action, last.source, last.ip) == ("unsubscribed", "one_click", "127.0.0.1")


def test_get_shows_the_page_and_changes_nothing(served: Served) -> None:
    sid = served.add("bernd@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    before = served.store.history(sid)
    with served.client() as client:
        for _ in range(3):  # a link scanner opening the link again and again
            page = client.get(f"/u/{token}")
            assert page.status_code == 200
    assert '<html lang="de">' in page.text
    assert "Smart zu wissen" in page.text  # newsletter title from newsletter.toml
    assert "Stadtnachrichten" in page.text  # list title
    assert page.text.count("<button") == 1 and ">Abmelden</button>" in page.text
    assert "bernd@example.org" not in page.text
    assert served.status(sid) == "subscribed"
    assert served.store.history(sid) == before


def test_second_one_click_post_is_harmless(served: Served) -> None:
    sid = served.add("carla@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    with served.client() as client:
        first = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        second = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert first.status_code == second.status_code == 200
    assert served.status(sid) == "unsubscribed"
    assert [e.action for e in served.store.history(sid)].count("unsubscribed") == 1


def test_page_form_unsubscribes_and_offers_to_subscribe_again(served: Served) -> None:
    sid = served.add("dora@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    with served.client() as client:
        page = client.get(f"/u/{token}")
        assert page.status_code == 200
        done = client.post(f"/u/{token}", data={})  # the page's form: the button alone
        assert done.status_code == 200
        assert "Sie wurden abgemeldet" in done.text
        assert 'href="/subscribe"' in done.text
        assert client.get("/subscribe").status_code == 200
        # Visiting the link again says so and offers no button.
        again = client.get(f"/u/{token}")
        assert "bereits abgemeldet" in again.text and "<button" not in again.text
    assert served.status(sid) == "unsubscribed"
    assert served.store.history(sid)[-1].source == "unsubscribe_page"


def _flip(token: str, index: int) -> str:
    char = token[index]
    return token[:index] + ("B" if char != "B" else "C") + token[index + 1:]


def test_token_with_one_changed_character_is_rejected(served: Served) -> None:
    sid = served.add("emil@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    payload_end = token.index(".")
    with served.client() as client:
        for index in (1, payload_end - 2, payload_end + 5, len(token) - 6):
            bad = _flip(token, index)
            page = client.get(f"/u/{bad}")
            post = client.post(f"/u/{bad}", data={"List-Unsubscribe": "One-Click"})
            assert 400 <= page.status_code < 500 and 400 <= post.status_code < 500, index
            assert "emil" not in page.text and "Stadtnachrichten" not in page.text
        assert client.get("/u/not-a-token").status_code == 400
    assert served.status(sid) == "subscribed"


def test_valid_signature_for_an_unknown_subscriber_is_404(served: Served) -> None:
    token = served.tokens.mint_unsubscribe("no-such-token-id", served.list_id)
    with served.client() as client:
        response = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 404


def test_tokens_of_one_purpose_never_work_for_the_other(served: Served) -> None:
    pending = served.add("fritz@example.org", confirmed=False)
    subscribed = served.add("greta@example.org")
    unsubscribe_token = served.tokens.mint_unsubscribe(served.token_id(pending), served.list_id)
    confirm_token = served.tokens.mint_confirm(served.token_id(subscribed), served.list_id)
    with served.client() as client:
        assert client.get(f"/confirm/{unsubscribe_token}").status_code == 400
        assert client.post(f"/confirm/{unsubscribe_token}", data={"csrf": "x"}).status_code == 400
        assert client.get(f"/u/{confirm_token}").status_code == 400
        assert client.post(f"/u/{confirm_token}",
                           data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert served.status(pending) == "pending"
    assert served.status(subscribed) == "subscribed"


class _EightDaysAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 8 * 86400


def test_expired_confirmation_link_shows_a_clear_page_and_changes_nothing(served: Served) -> None:
    sid = served.add("hanna@example.org", confirmed=False)
    old = URLSafeTimedSerializer(signing_keys(served.project), salt=CONFIRM_SALT, signer=_EightDaysAgo)
    token = old.dumps([served.token_id(sid), served.list_id])
    with served.client() as client:
        page = client.get(f"/confirm/{token}")
        post = client.post(f"/confirm/{token}", data={"csrf": "whatever"})
    assert page.status_code == post.status_code == 410
    assert "abgelaufen" in page.text and "nichts geändert" in page.text
    assert 'href="/subscribe"' in page.text
    assert served.status(sid) == "pending"


def test_confirm_days_setting_sets_the_expiry(serve: ServeFactory) -> None:
    served = serve(serve__confirm_days="7")
    sid = served.add("ida@example.org", confirmed=False)
    old = URLSafeTimedSerializer(signing_keys(served.project), salt=CONFIRM_SALT, signer=_EightDaysAgo)
    with served.client() as client:
        assert client.get(f"/confirm/{old.dumps([served.token_id(sid), served.list_id])}").status_code == 410
    longer = serve(serve__confirm_days="9")
    with longer.client() as client:
        assert client.get(f"/confirm/{old.dumps([served.token_id(sid), served.list_id])}").status_code == 200


# --- subscribe --------------------------------------------------------------------------------


def test_sign_up_response_is_identical_for_new_and_existing_addresses(
    serve: ServeFactory, smtp_server: Any
) -> None:
    served = serve(smtp__host=smtp_server.host, smtp__port=str(smtp_server.port), smtp__security="none")
    served.add("subscribed@example.org")
    served.add("pending@example.org", confirmed=False)
    served.add("left@example.org")
    served.store.unsubscribe("left@example.org", served.list_id)
    served.store.suppress("blocked@example.org", "test")
    addresses = ["subscribed@example.org", "blocked@example.org", "pending@example.org",
                 "left@example.org", "new@example.org"]
    responses = []
    with served.client() as client:
        for address in addresses:
            responses.append(sign_up(client, address))
    first = responses[0]
    for response in responses:
        assert response.status_code == 200
        assert response.text == first.text
        assert {k: v for k, v in response.headers.items() if k != "date"} == \
               {k: v for k, v in first.headers.items() if k != "date"}
    assert "Bitte bestätigen Sie Ihre Anmeldung" in first.text
    # Mail only to those who can still confirm: pending (again), unsubscribed, new.
    wanted = {"pending@example.org", "left@example.org", "new@example.org"}
    served.wait_for_sign_ups(len(addresses))  # the store work runs after each answer
    wait_for(lambda: len(smtp_server.messages) >= len(wanted))
    time.sleep(0.3)  # room for a wrong extra mail to show up
    assert {m.rcpt_tos[0] for m in smtp_server.messages} == wanted
    assert served.store.find_subscriber("blocked@example.org") is None
    assert served.status(served.store.find_subscriber("subscribed@example.org").id) == "subscribed"


def _confirmation_link(data: bytes, base_url: str) -> str:
    message = email.message_from_bytes(data, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    links = re.findall(re.escape(base_url) + r"/confirm/[A-Za-z0-9_.\-]+", text)
    assert len(links) == 1, text
    assert links[0] in html
    return links[0]


def test_double_opt_in_round_trip_through_real_smtp(serve: ServeFactory, smtp_server: Any) -> None:
    served = serve(smtp__host=smtp_server.host, smtp__port=str(smtp_server.port), smtp__security="none")
    with served.client() as client:
        form = client.get("/subscribe")
        assert served.project.settings.serve.consent_text in form.text
        assert 'href="https://example.org/datenschutz"' in form.text
        assert '<label for="email">' in form.text and 'id="email"' in form.text
        done = client.post("/subscribe", data={
            "csrf": csrf_of(form), "email": "Jana@Example.org", "name": "Jana <https://spam.example>",
            "consent": "1", "website": ""})
        assert done.status_code == 200
        wait_for(lambda: len(smtp_server.messages) == 1)
        received = smtp_server.messages[0]
        assert received.rcpt_tos == ["Jana@example.org"]
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        assert "Bitte bestätigen" in message["Subject"]
        assert message["List-Unsubscribe"] is None
        assert b"Content-Transfer-Encoding: 8bit" not in received.data
        link = _confirmation_link(received.data, served.url)

        subscriber = served.store.find_subscriber("jana@example.org")
        # The typed name waits for the confirmation (Store.request_subscription): anyone can type
        # anyone's address.
        assert subscriber is not None and subscriber.name is None
        assert b"spam.example" not in received.data  # form text never travels in the mail
        assert served.status(subscriber.id) == "pending"
        page = client.get(link.removeprefix(served.url))
        assert page.status_code == 200 and "Anmeldung bestätigen" in page.text
        assert served.status(subscriber.id) == "pending"  # GET does not confirm
        confirmed = client.post(link.removeprefix(served.url), data={"csrf": csrf_of(page)})
        assert confirmed.status_code == 200 and "Anmeldung bestätigt" in confirmed.text
    assert served.status(subscriber.id) == "subscribed"
    assert served.store.find_subscriber("jana@example.org").name == "Jana <https://spam.example>"
    log = served.store.history(subscriber.id)
    assert [(e.action, e.source) for e in log] == [("pending", "web"), ("subscribed", "confirm")]
    assert log[0].ip == "127.0.0.1" and log[0].consent_version == "1"


@pytest.mark.parametrize("left_as", ["unsubscribed", "bounced"])
def test_who_left_comes_back_by_signing_up_and_confirming(serve: ServeFactory, smtp_server: Any,
                                                         left_as: str) -> None:
    served = serve(smtp__host=smtp_server.host, smtp__port=str(smtp_server.port), smtp__security="none")
    sid = served.add("back@example.org", confirmed=True)
    source = "one_click" if left_as == "unsubscribed" else "bounce"
    served.store.set_status(sid, served.list_id, left_as, source)
    # Confirmation tokens carry whole seconds: the new link is asked for in a later second.
    time.sleep(1.05 - time.time() % 1)
    with served.client() as client:
        assert sign_up(client, "back@example.org").status_code == 200
        wait_for(lambda: len(smtp_server.messages) == 1)
        assert served.status(sid) == left_as  # the sign-up alone changes nothing
        link = _confirmation_link(smtp_server.messages[0].data, served.url).removeprefix(served.url)
        page = client.get(link)
        confirmed = client.post(link, data={"csrf": csrf_of(page)})
        assert confirmed.status_code == 200 and "Anmeldung bestätigt" in confirmed.text
    assert served.status(sid) == "subscribed"
    assert [e.action for e in served.store.history(sid)][-2:] == [left_as, "subscribed"]


def test_confirming_twice_and_after_unsubscribing(served: Served) -> None:
    sid = served.add("kai@example.org", confirmed=False)
    token = served.tokens.mint_confirm(served.token_id(sid), served.list_id)
    with served.client() as client:
        page = client.get(f"/confirm/{token}")
        assert client.post(f"/confirm/{token}", data={"csrf": csrf_of(page)}).status_code == 200
        again = client.post(f"/confirm/{token}", data={"csrf": csrf_of(page)})
        assert again.status_code == 200 and "Anmeldung bestätigt" in again.text
        served.store.unsubscribe("kai@example.org", served.list_id)
        late = client.post(f"/confirm/{token}", data={"csrf": csrf_of(page)})
        assert "kann nicht mehr bestätigt werden" in late.text
    assert served.status(sid) == "unsubscribed"  # an old confirm link never re-subscribes


def test_invalid_sign_up_shows_errors_and_keeps_the_input_escaped(served: Served) -> None:
    with served.client() as client:
        form = client.get("/subscribe")
        response = client.post("/subscribe", data={"csrf": csrf_of(form), "email": "kein-at-zeichen",
                                                   "name": "<script>alert(1)</script>", "website": ""})
    assert response.status_code == 400
    assert "gültige E-Mail-Adresse" in response.text
    assert "Einwilligung" in response.text
    assert "<script>alert" not in response.text and "&lt;script&gt;" in response.text
    assert 'aria-invalid="true"' in response.text
    assert served.store.find_subscriber("kein-at-zeichen") is None


def test_several_lists_get_their_own_subscribe_pages(served: Served) -> None:
    served.store.create_list("events", "Veranstaltungen")
    with served.client() as client:
        choice = client.get("/subscribe")
        assert 'href="/subscribe/events"' in choice.text and 'href="/subscribe/news"' in choice.text
        assert client.get("/subscribe/unknown").status_code == 404
        response = sign_up(client, "lena@example.org", "/subscribe/events")
    assert response.status_code == 200
    served.wait_for_sign_ups(1)
    found = served.store.find_subscriber("lena@example.org")
    events = served.store.get_list("events")
    assert served.store.membership_status(found.id, events.id) == "pending"
    assert served.status(found.id) is None


# --- archive and health -----------------------------------------------------------------------


def test_archive_serves_dist_and_health(served: Served) -> None:
    dist = served.project.dist_dir
    (dist / "2026-02").mkdir(parents=True)
    (dist / "index.html").write_text("<h1>Archiv</h1>", encoding="utf-8")
    (dist / "2026-02" / "index.html").write_text("<h1>Februar</h1>", encoding="utf-8")
    (dist / "2026-02" / "issue.json").write_text("{}", encoding="utf-8")  # as `build` leaves it
    (dist / "feed.xml").write_text("<feed/>", encoding="utf-8")
    with served.client() as client:
        assert client.get("/healthz").text == "ok"
        assert "Archiv" in client.get("/archive/").text
        assert "Februar" in client.get("/archive/2026-02/").text
        assert client.get("/archive/feed.xml").status_code == 200
        assert client.get("/archive").headers["location"] == "/archive/"
        assert client.get("/archive/2026-02").headers["location"] == "/archive/2026-02/"
        assert client.get("/archive/missing/").status_code == 404
        assert client.get("/archive/%2e%2e/newsletter.toml").status_code == 404


def test_project_templates_override_the_pages(project_dir: Path, serve: ServeFactory) -> None:
    (project_dir / "templates" / "web").mkdir(parents=True)
    (project_dir / "templates" / "web" / "subscribe_sent.html").write_text(
        '{% extends "default:web/subscribe_sent.html" %}'
        '{% block content %}<p>Danke, schauen Sie in Ihr Postfach!</p>{% endblock %}', encoding="utf-8")
    served = serve()
    with served.client() as client:
        response = sign_up(client, "mia@example.org")
    assert "Danke, schauen Sie in Ihr Postfach!" in response.text
    assert '<html lang="de">' in response.text  # the default base still wraps it


def test_newsletter_serve_command_runs_and_logs_no_tokens(project_dir: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "NEWSLETTER_NEWSLETTER__BASE_URL": f"http://127.0.0.1:{port}"}
    project = open_project(project_dir)
    with open_store(project) as store:
        lst = store.create_list("news")
        sid, _ = store.add_subscriber("nora@example.org", lst.id, confirmed=True)
        token_id = store.subscriber(sid).token_id  # type: ignore[union-attr]
    token = Tokens.for_project(project).mint_unsubscribe(token_id, lst.id)
    log = (tmp_path / "serve.log").open("w+b")
    server = subprocess.Popen([sys.executable, "-m", "newsletter", "serve", "--project", str(project_dir),
                               "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.TransportError:
                assert server.poll() is None, "newsletter serve exited"
                return False

        wait_for(up, timeout=20)
        response = httpx.post(f"http://127.0.0.1:{port}/u/{token}", data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    finally:
        server.terminate()
        server.wait(10)
    log.seek(0)
    output = log.read().decode()
    assert "POST /u/… 200" in output
    assert token not in output and "nora" not in output
    with open_store(project) as store:
        assert store.membership_status(sid, lst.id) == "unsubscribed"


# --- addresses with umlauts, lists without a title ----------------------------------------------

UMLAUT_HINT = "Bitte verwenden Sie eine Adresse ohne Umlaute vor dem @."


@pytest.mark.parametrize("address", ["müller@example.org", "greta.groß@example.org", "jörg@müller.de"])
def test_umlaut_before_the_at_is_refused_on_the_form(serve: ServeFactory, smtp_server: Any,
                                                     address: str) -> None:
    served = serve(smtp__host=smtp_server.host, smtp__port=str(smtp_server.port), smtp__security="none")
    with served.client() as client:
        page = sign_up(client, address)
    assert page.status_code == 400
    assert UMLAUT_HINT in html.unescape(page.text)
    assert f'value="{html.escape(address)}"' in page.text  # the input is kept for correcting
    assert served.store.find_subscriber(address) is None
    assert served.store.members(served.list_id, status=None) == []
    assert smtp_server.messages == []


def test_umlaut_domain_confirmation_goes_to_the_punycode_address(serve: ServeFactory,
                                                                 smtp_server: Any) -> None:
    served = serve(smtp__host=smtp_server.host, smtp__port=str(smtp_server.port), smtp__security="none")
    with served.client() as client:
        assert sign_up(client, "info@müller.de").status_code == 200
    wait_for(lambda: len(smtp_server.messages) == 1)
    received = smtp_server.messages[0]
    assert received.rcpt_tos == ["info@xn--mller-kva.de"]
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert str(message["To"]) == "info@xn--mller-kva.de"
    assert b"=?" not in received.data.split(b"\r\nTo:", 1)[1].split(b"\r\n", 1)[0]
    assert served.store.find_subscriber("info@müller.de") is not None


def test_list_without_title_shows_the_newsletter_title(project_dir, serve: ServeFactory,
                                                       smtp_server: Any) -> None:
    store = open_store(open_project(project_dir))
    store.create_list("news")  # no title
    store.close()
    served = serve(smtp__host=smtp_server.host, smtp__port=str(smtp_server.port), smtp__security="none",
                   newsletter__title="Stadtbrief Musterstadt")
    subscriber_id = served.add("hans@example.org")
    with served.client() as client:
        token = served.tokens.mint_unsubscribe(served.token_id(subscriber_id), served.list_id)
        page = html.unescape(client.get(f"/u/{token}").text)
        assert "„Stadtbrief Musterstadt“" in page and "„news“" not in page
        form = html.unescape(client.get("/subscribe").text)
        assert "„Stadtbrief Musterstadt“" in form and "„news“" not in form
        assert sign_up(client, "greta@example.org").status_code == 200
    wait_for(lambda: len(smtp_server.messages) == 1)
    message = email.message_from_bytes(smtp_server.messages[0].data, policy=email.policy.default)
    assert message["Subject"] == "Bitte bestätigen Sie Ihre Anmeldung: Stadtbrief Musterstadt"


# --- the words are in the templates -----------------------------------------------------------


def test_every_code_the_handlers_pass_is_worded_by_a_template(project_dir: Path) -> None:
    from newsletter.web.pages import ERROR_PAGES, FORM_ERRORS, Pages

    pages = Pages(open_project(project_dir))
    form_error = pages.env.get_template("web/messages.html").module.form_error  # type: ignore[attr-defined]
    words = [str(form_error(code)) for code in FORM_ERRORS]
    assert all(text and text not in FORM_ERRORS for text in words)
    assert len(set(words)) == len(FORM_ERRORS)
    headings = {status: re.findall(r"<h1>(.*?)</h1>", pages.error_html(status).decode())[0]
                for status in ERROR_PAGES}
    assert len(set(headings.values())) == len(ERROR_PAGES)  # each status has its own words
    assert headings[500] == "Fehler"
    assert "<h1>Fehler</h1>" in pages.error_html(418).decode()  # an unworded status: the 500 text
