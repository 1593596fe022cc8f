"""Shared fixtures: a fresh project directory and a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pgcluster import Cluster, ClusterUnavailable, start_cluster
from ports import free_port

from newsletter.project import Project, open_project
from newsletter.scaffold import init_project

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NEWSLETTER_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("NEWSLETTER_"):
            monkeypatch.delenv(name)


# --- the two back-ends ------------------------------------------------------------------------
# A test module that sets `pytestmark = pytest.mark.backends` runs each of its tests that use a
# project (or the `database_url` fixture) on SQLite and on PostgreSQL. The PostgreSQL server is
# a throw-away cluster started once per test run (tests/pgcluster.py); each test gets a new
# database in it. Without PostgreSQL binaries those tests fail with a line saying what to install.
# A test of such a module that is about SQLite itself says
# `@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)`.

BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends: run the module's tests on SQLite and PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    chosen = any(m.args and m.args[0] == "backend"
                 for m in metafunc.definition.iter_markers("parametrize"))
    if ("backend" in metafunc.fixturenames and not chosen
            and metafunc.definition.get_closest_marker("backends")):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


_database_numbers = itertools.count(1)


def _new_database(backend: str, request: pytest.FixtureRequest, path: Path) -> str:
    """A new empty database: the SQLite file `path`, or a new database in the PostgreSQL cluster."""
    if backend == "postgresql":
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        return cluster.create_database(f"test_{os.getpid()}_{next(_database_numbers)}")
    return f"sqlite:///{path}"


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL a test project uses: its own SQLite file, or a new PostgreSQL database."""
    return _new_database(backend, request, tmp_path / "newsletter.db")


@pytest.fixture
def fresh_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A second empty database on the test's back-end: a fresh schema to compare an upgraded
    one with."""
    return _new_database(backend, request, tmp_path / "fresh.db")


@pytest.fixture
def project_dir(tmp_path: Path, backend: str, request: pytest.FixtureRequest,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project created by `newsletter init` in a temporary directory. On PostgreSQL its
    database URL comes from the environment (so CLI subprocesses use it too)."""
    root = tmp_path / "project"
    init_project(root)
    if backend == "postgresql":
        monkeypatch.setenv("NEWSLETTER_DATABASE__URL", request.getfixturevalue("database_url"))
    return root


@pytest.fixture
def project(project_dir: Path) -> Project:
    return open_project(project_dir)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that keeps every message it accepts.

    Subclass and override `rcpt_reply` / `data_reply` to misbehave in fault tests.
    """

    messages: list[Received] = field(default_factory=list)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self.rcpt_reply(address)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.data_reply(envelope)
        if reply.startswith("250"):
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or envelope.content)))
        return reply

    def rcpt_reply(self, address: str) -> str:
        return "250 OK"

    def data_reply(self, envelope: Envelope) -> str:
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


def start_smtp(handler: RecordingHandler) -> tuple[Controller, SmtpServer]:
    port = free_port()
    # decode_data=False keeps the exact bytes received (original_content).
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False,
                            enable_SMTPUTF8=True)
    controller.start()
    return controller, SmtpServer("127.0.0.1", port, handler)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1 that records every message it accepts."""
    controller, server = start_smtp(RecordingHandler())
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def smtp_project(
    project_dir: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> Project:
    """A project configured (through the environment) to deliver to `smtp_server`."""
    monkeypatch.setenv("NEWSLETTER_SMTP__HOST", smtp_server.host)
    monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(smtp_server.port))
    monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "none")
    return open_project(project_dir)
