"""Shared fixtures: a fresh project directory and a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.project import Project, open_project
from newsletter.scaffold import init_project

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NEWSLETTER_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("NEWSLETTER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A project created by `newsletter init` in a temporary directory."""
    root = tmp_path / "project"
    init_project(root)
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
