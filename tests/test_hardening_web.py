"""Issue 11, "what an attacker found", for `newsletter serve`, against real servers:

* key rotation, the whole story of README "Key rotation": links signed before, during and
  after a rotation — unsubscribe links in real sends, confirmation links in real confirmation
  mails, CSRF tokens of the real forms;
* sign-up answers that tell nothing about the address: the store work runs after the answer;
* `/healthz` that notices a database which cannot write (a full disk, made real with
  RLIMIT_FSIZE on a `newsletter serve` process).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import os
import re
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import test_serve
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer
from ports import free_port
from test_serve import Served, ServeFactory, csrf_of, sign_up, wait_for

from newsletter.audience.store import Store, open_store
from newsletter.db.engine import DatabaseError
from newsletter.db.health import probe_write
from newsletter.db.migrations import schema_version
from newsletter.project import open_project
from newsletter.tokens import CONFIRM_SALT, UNSUBSCRIBE_SALT, Tokens
from newsletter.web.security import CSRF_SALT
from newsletter.web.site import Site

# Every test with a project runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.backends

# The real-server fixtures live in test_serve.py.
serve = test_serve.serve
served = test_serve.served

ISSUE = "issues/2026-02.yaml"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


# --- key rotation -----------------------------------------------------------------------------

OLD_KEY = "old-key-" + "o" * 36
NEW_KEY = "new-key-" + "n" * 36


class Outbox:
    """The project's Maildir outbox (no SMTP host configured): the mails not seen yet, by
    recipient."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.seen = directory, set[Path]()

    def new(self) -> dict[str, EmailMessage]:
        found = {}
        for path in sorted(self.directory.glob("new/*")):
            if path not in self.seen:
                self.seen.add(path)
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                found[str(message["To"].addresses[0].addr_spec)] = message
        return found

    def wait(self, count: int) -> dict[str, EmailMessage]:
        """The next `count` mails (confirmation mails go out after the sign-up's answer)."""
        found: dict[str, EmailMessage] = {}

        def arrived() -> bool:
            found.update(self.new())
            return len(found) >= count

        wait_for(arrived)
        return found


def unsubscribe_token(message: EmailMessage) -> str:
    """The token of the List-Unsubscribe header, as a mail provider's one-click would use it."""
    match = re.search(r"/u/([A-Za-z0-9_.-]+)>", str(message["List-Unsubscribe"]))
    assert match, message["List-Unsubscribe"]
    return match.group(1)


def confirm_token(message: EmailMessage) -> str:
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(r"/confirm/([A-Za-z0-9_.-]+)", text)
    assert match, text
    return match.group(1)


FORM = "/subscribe/news"  # several lists: each has its own form


def csrf_form(served: Served) -> tuple[str, str]:
    """(form token, cookie nonce) of the sign-up form, as a browser gets them."""
    with served.client() as client:
        form = client.get(FORM)
        return csrf_of(form), client.cookies["nl_csrf"]


def post_sign_up(served: Served, csrf: tuple[str, str], address: str) -> httpx.Response:
    """A sign-up posted with a form token (and its cookie) the browser got earlier."""
    token, nonce = csrf
    with served.client(cookies={"nl_csrf": nonce}) as client:
        return client.post(FORM, data={"csrf": token, "email": address, "name": "",
                                               "consent": "1", "website": ""})


def confirm(served: Served, token: str) -> httpx.Response:
    """The reader opens the confirmation link and presses the button."""
    with served.client() as client:
        page = client.get(f"/confirm/{token}")
        if page.status_code != 200:
            return page
        return client.post(f"/confirm/{token}", data={"csrf": csrf_of(page)})


def member_status(store: Store, address: str, list_name: str) -> str | None:
    found, mailing_list = store.find_subscriber(address), store.get_list(list_name)
    assert found is not None and mailing_list is not None
    return store.membership_status(found.id, mailing_list.id)


def test_key_rotation_before_during_and_after(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Key rotation": new mails carry links of the new key, old links keep working while
    the old key is listed, and once it is removed only its own links answer 400."""
    # Before: one key. An issue goes out, two readers sign up, a reader opens the form.
    before = serve(secret__token=OLD_KEY)
    outbox = Outbox(before.project.outbox_dir)
    store = before.store
    old_list = store.create_list("before", "Vorher")
    for address in ("kept@example.org", "retired@example.org"):
        store.add_subscriber(address, old_list.id, confirmed=True)
    assert before.project.send(before.project.root / ISSUE, "before").sent == 2
    mailed = outbox.new()
    old_unsubscribe = {address: unsubscribe_token(mailed[address]) for address in mailed}
    with before.client() as client:
        assert sign_up(client, "ben@example.org", FORM).status_code == 200
        assert sign_up(client, "bea@example.org", FORM).status_code == 200
    mailed = outbox.wait(2)
    old_confirm = {address: confirm_token(message) for address, message in mailed.items()}
    old_csrf = csrf_form(before)
    # (They are signed with the old key, of course.)
    assert URLSafeSerializer(OLD_KEY, salt=UNSUBSCRIBE_SALT).loads(old_unsubscribe["kept@example.org"])
    assert URLSafeTimedSerializer(OLD_KEY, salt=CONFIRM_SALT).loads(old_confirm["ben@example.org"])
    assert URLSafeTimedSerializer(OLD_KEY, salt=CSRF_SALT).loads(old_csrf[0])

    # During: the new key signs, the old one is listed. Old links work ...
    during = serve(secret__token=NEW_KEY, secret__old_tokens=json.dumps([OLD_KEY]))
    with during.client() as client:
        response = client.post(f"/u/{old_unsubscribe['kept@example.org']}", data=ONE_CLICK)
    assert response.status_code == 200
    assert member_status(store, "kept@example.org", "before") == "unsubscribed"
    assert confirm(during, old_confirm["ben@example.org"]).status_code == 200
    assert member_status(store, "ben@example.org", "news") == "subscribed"
    assert post_sign_up(during, old_csrf, "cleo@example.org").status_code == 200  # a form opened before
    during.wait_for_sign_ups(1)
    assert member_status(store, "cleo@example.org", "news") == "pending"
    outbox.wait(1)  # cleo's confirmation mail
    # ... and everything new is signed with the new key alone.
    new_list = store.create_list("during", "Während")
    store.add_subscriber("dana@example.org", new_list.id, confirmed=True)
    assert during.project.send(during.project.root / ISSUE, "during").sent == 1
    new_unsubscribe = unsubscribe_token(outbox.new()["dana@example.org"])
    with during.client() as client:
        assert sign_up(client, "emil@example.org", FORM).status_code == 200
    new_confirm = confirm_token(outbox.wait(1)["emil@example.org"])
    new_csrf = csrf_form(during)
    assert URLSafeSerializer(NEW_KEY, salt=UNSUBSCRIBE_SALT).loads(new_unsubscribe)
    assert URLSafeTimedSerializer(NEW_KEY, salt=CONFIRM_SALT).loads(new_confirm)
    assert URLSafeTimedSerializer(NEW_KEY, salt=CSRF_SALT).loads(new_csrf[0]) == [new_csrf[1], FORM]

    # After: the old key is removed (it leaked). What was made during the rotation still works ...
    monkeypatch.delenv("NEWSLETTER_SECRET__OLD_TOKENS")
    after = serve(secret__token=NEW_KEY)
    assert after.project.settings.secret.old_tokens == []
    with after.client() as client:
        assert client.post(f"/u/{new_unsubscribe}", data=ONE_CLICK).status_code == 200
    assert member_status(store, "dana@example.org", "during") == "unsubscribed"
    assert confirm(after, new_confirm).status_code == 200
    assert member_status(store, "emil@example.org", "news") == "subscribed"
    assert post_sign_up(after, new_csrf, "finn@example.org").status_code == 200
    after.wait_for_sign_ups(1)
    assert member_status(store, "finn@example.org", "news") == "pending"
    # ... and what the old key signed answers 400 (the CSRF token: the form's 403) and changes nothing.
    with after.client() as client:
        token = old_unsubscribe["retired@example.org"]
        assert client.get(f"/u/{token}").status_code == 400
        assert client.post(f"/u/{token}", data=ONE_CLICK).status_code == 400
        assert client.get(f"/confirm/{old_confirm['bea@example.org']}").status_code == 400
    assert member_status(store, "retired@example.org", "before") == "subscribed"
    assert member_status(store, "bea@example.org", "news") == "pending"
    assert post_sign_up(after, old_csrf, "gert@example.org").status_code == 403
    assert store.find_subscriber("gert@example.org") is None


# --- sign-up: the same answer, the same work before it ----------------------------------------


def test_sign_up_store_work_runs_only_after_the_answer(served: Served,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store took longer for a new address than for a subscribed one, and the answer waited
    for it. Now the answer goes out first: the store call waits here until the client holds
    its answer — which it only can if the answer does not wait for the store."""
    answered = threading.Event()
    after_answer: list[bool] = []
    store = served.site.store
    request_subscription = store.request_subscription

    def observed(*args: Any, **kwargs: Any) -> Any:
        # Bounded, so that code answering only after this call fails instead of hanging.
        after_answer.append(answered.wait(timeout=15))
        return request_subscription(*args, **kwargs)

    monkeypatch.setattr(store, "request_subscription", observed)
    served.add("subscribed@example.org")
    with served.client() as client:
        for count, address in enumerate(("new@example.org", "subscribed@example.org"), 1):
            answered.clear()
            response = sign_up(client, address)
            answered.set()
            assert response.status_code == 200
            served.wait_for_sign_ups(count)
    assert after_answer == [True, True]
    assert served.status(served.store.find_subscriber("new@example.org").id) == "pending"  # type: ignore[union-attr]


def test_sign_up_answers_are_identical_whatever_the_address(served: Served) -> None:
    """Byte for byte (but the Date header), for a new, a pending, a subscribed, an unsubscribed
    and a suppressed address."""
    served.add("pending@example.org", confirmed=False)
    served.add("subscribed@example.org")
    served.add("left@example.org")
    served.store.unsubscribe("left@example.org", served.list_id)
    served.store.suppress("blocked@example.org", "test")
    addresses = ["new@example.org", "pending@example.org", "subscribed@example.org",
                 "left@example.org", "blocked@example.org"]
    with served.client() as client:
        answers = [sign_up(client, address) for address in addresses]
    served.wait_for_sign_ups(len(addresses))
    first = answers[0]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.content == first.content
        assert [(k, v) for k, v in answer.headers.raw if k.lower() != b"date"] == \
            [(k, v) for k, v in first.headers.raw if k.lower() != b"date"]
    assert served.store.find_subscriber("blocked@example.org") is None


def test_a_failing_sign_up_is_logged_without_personal_data(served: Served, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The reader already has their page when the store fails: the failure must reach the log,
    but without the address, the name or the client's address."""
    with served.client() as client:
        normal = sign_up(client, "ok@example.org")

    def broken(address: str, list_id: int, *, name: str | None, ip: str | None, **_: Any) -> Any:
        raise sa.exc.OperationalError(
            "INSERT INTO subscribers …", {"email": address, "name": name, "ip": ip},
            RuntimeError(f"disk I/O error while writing {address} ({name}, {ip})"))

    caplog.set_level(logging.ERROR, logger="newsletter.serve")
    monkeypatch.setattr(served.site.store, "request_subscription", broken)
    with served.client() as client:
        failed = sign_up(client, "frieda@example.org", name="Frieda Fehler")
    assert failed.status_code == 200 and failed.content == normal.content
    wait_for(lambda: "not recorded" in caplog.text)
    assert "sign-up to list news not recorded: OperationalError: disk I/O error while writing" \
        in caplog.text
    assert "frieda" not in caplog.text and "Frieda" not in caplog.text
    assert "127.0.0.1" not in caplog.text


# --- /healthz: a database that cannot write is not healthy -------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'newsletter.db'}")
    yield opened
    opened.close()


def test_probe_write_needs_disk_space_and_changes_nothing(store: Store, tmp_path: Path) -> None:
    wal = tmp_path / "newsletter.db-wal"
    with store.read() as conn:
        before = conn.execute(sa.select(schema_version)).all()
    assert store.checkpoint() and wal.stat().st_size == 0
    probe_write(store.engine)
    assert wal.stat().st_size > 0  # a committed page in the WAL: disk space, as any write needs
    with store.read() as conn:
        assert conn.execute(sa.select(schema_version)).all() == before


def test_probe_write_refuses_a_database_without_schema_version(store: Store) -> None:
    with store.write() as conn:
        conn.execute(schema_version.delete())
    with pytest.raises(DatabaseError, match="no schema version"):
        probe_write(store.engine)


# `newsletter serve` with a file size limit. RLIMIT_FSIZE refuses writes at offsets past the
# limit (EFBIG; SIGXFSZ ignored, so the write fails instead of killing the process), for every
# file of the process: set in the child itself, not in a preexec_fn, which is unsafe in a
# process with threads. The limit is about offsets, not growth: at the database file's size it
# would still leave the WAL (written from offset 0) that much room, so it is set by the WAL.
LIMITED_SERVE = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv.pop(1)), resource.RLIM_INFINITY))
sys.argv[0] = "newsletter"
runpy.run_module("newsletter", run_name="__main__", alter_sys=True)
"""


def wal_full_limit(store: Store) -> int:
    """The WAL is emptied before the server starts, so every write of the server must append
    to it: its 32-byte header, then frames of a 24-byte header and one page. With this limit not
    one frame fits — a disk without room for the database to grow."""
    with store.read() as conn:
        page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
    return 32 + 24 + page_size - 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # a full disk under SQLite's WAL
def test_healthz_answers_503_while_the_database_cannot_write(project_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "NEWSLETTER_NEWSLETTER__BASE_URL": f"http://127.0.0.1:{port}"}
    project = open_project(project_dir)
    store = open_store(project)
    news = store.create_list("news")
    sid, _ = store.add_subscriber("nora@example.org", news.id, confirmed=True)
    token = Tokens.for_project(project).mint_unsubscribe(store.subscriber(sid).token_id, news.id)  # type: ignore[union-attr]
    # Empty the WAL; this store stays open, so SQLite keeps the (empty) WAL and its index file
    # while the server runs instead of creating them anew.
    assert store.checkpoint()
    server = subprocess.Popen(
        [sys.executable, "-c", LIMITED_SERVE, str(wal_full_limit(store)),
         "serve", "--project", str(project_dir), "--port", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(server.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    try:
        def up() -> bool:
            try:
                httpx.get(f"http://127.0.0.1:{port}/archive/")
                return True
            except httpx.TransportError:
                assert server.poll() is None, "newsletter serve exited"
                return False

        wait_for(up, timeout=20)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            one_click = client.post(f"/u/{token}", data=ONE_CLICK)
            assert one_click.status_code >= 500  # what the issue saw: unsubscribes fail ...
            health = client.get("/healthz")
            assert health.status_code == 503  # ... and health says so
            assert health.text == "database not writable"
            assert store.membership_status(sid, news.id) == "subscribed"

            # Room again (the limit lifted from outside, as freeing disk space would).
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            health = client.get("/healthz")
            assert (health.status_code, health.text) == (200, "ok")
            assert client.post(f"/u/{token}", data=ONE_CLICK).status_code == 200
        assert store.membership_status(sid, news.id) == "unsubscribed"
    finally:
        server.terminate()
        server.wait(10)
        reader.join(10)
        store.close()
    log = b"".join(output).decode()
    assert "health check failed" in log
    assert token not in log and "nora" not in log


def test_concurrent_health_checks_share_one_probe(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone can call /healthz: requests arriving while a probe runs get its answer instead of
    queueing writes of their own."""
    site = Site(project)
    release, probes = threading.Event(), []

    def probe(conn: Any) -> None:  # runs in the writer's batch
        probes.append(conn)
        release.wait(timeout=15)

    monkeypatch.setattr("newsletter.web.site.probe", probe)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(site.healthz(None))  # type: ignore[arg-type]
        second = asyncio.ensure_future(site.healthz(None))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # both handlers run up to waiting for the probe
        release.set()
        return await asyncio.gather(first, second)

    try:
        answers = asyncio.run(main())
        assert [a.body for a in answers] == [b"ok", b"ok"]
        assert len(probes) == 1
        assert asyncio.run(site.healthz(None)).body == b"ok"  # type: ignore[arg-type]
        assert len(probes) == 2  # a later request probes again
    finally:
        site.close()


def test_healthz_failure_is_503(project: Any, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    site = Site(project)

    def full(conn: Any) -> None:
        raise DatabaseError("newsletter.db: the disk is full")

    monkeypatch.setattr("newsletter.web.site.probe", full)
    try:
        answer = asyncio.run(site.healthz(None))  # type: ignore[arg-type]
    finally:
        site.close()
    assert (answer.status_code, answer.body) == (503, b"database not writable")
    assert "health check failed: newsletter.db: the disk is full" in caplog.text
