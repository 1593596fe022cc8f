"""Where bounce and complaint reports are read from, and how each is marked exactly once.

`open_source(spec, password=…)` returns a `Source` for

* ``imaps://user@host[:993]/INBOX`` — IMAP over TLS (imap-tools: a maintained client with MOVE,
  keywords and UID handling; imaplib alone would mean parsing FETCH responses ourselves);
  ``imap://…`` only with ``starttls=True`` (or the scheme ``imap+starttls://``): plain text is
  refused because the password would cross the network in the clear;
* ``pop3s://user@host[:995]`` — POP3 over TLS (poplib, the standard library; POP3 is simple enough
  that no third-party client is better); ``pop3://`` only with STARTTLS (``STLS``);
* a local Maildir (a directory with ``cur/ new/ tmp/``) or an mbox file — the standard library's
  `mailbox`, which knows both formats and mbox locking.

The protocol, the same for every source::

    with open_source(spec, password=pw) as source:
        for item in source.messages():        # only messages not yet marked
            ...record it in the database, commit...
            source.done(item.key)              # now mark it: it is never offered again
            # or, for a message that cannot be read:
            source.keep(item.key, reason)      # left where it is

A kept message is offered (and so reported) again on every run until someone deals with it:
never lost, never silently skipped.

`done` is called only after the caller's database commit, so a crash in between offers the
message again rather than losing it; the caller makes recording idempotent with `Item.digest`
(SHA-256 of the raw bytes) — that closes the remaining window and gives exactly-once counting.

How each source marks a message as done:

* IMAP: moved to the folder ``Processed`` (created when missing; MOVE, or COPY + delete where the
  server lacks MOVE); `keep` leaves the message in the folder, unread, and sets the keyword
  ``NewsletterUnreadable`` so a human can find it.
* POP3: deleting is the only marker POP3 has. `done` issues DELE; the server applies deletions
  when the session ends with QUIT (`close`). A broken connection undoes them, so those messages
  come back next time — and are recognised by their digest. `keep` leaves the message alone.
* Maildir: moved into the Maildir++ sub-folder ``.Processed`` (created when missing); `keep`
  leaves it in place.
* mbox: the file is never rewritten (the MTA appends to it concurrently, and rewriting an mbox is
  where mail gets lost). Processed messages are listed by digest, one per line, in the state file
  ``<mbox>.processed`` next to it; `keep` leaves the message unlisted.

Errors (wrong password, TLS failure, unreachable host, missing path) raise `MailboxError`, one
line naming the mailbox without its password.
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import mailbox
import os
import poplib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import unquote, urlsplit

from imap_tools import MailBox, MailBoxStartTls
from imap_tools.errors import MailboxLoginError

from newsletter.errors import NewsletterError

PROCESSED_FOLDER = "Processed"
UNREADABLE_KEYWORD = "NewsletterUnreadable"
STATE_SUFFIX = ".processed"
DEFAULT_TIMEOUT = 30.0


class MailboxError(NewsletterError):
    """A bounce mailbox cannot be opened or read; the message names it (never the password)."""


@dataclass(frozen=True)
class Item:
    """One message of a source: `key` to mark it, `raw` bytes, `digest` to record it once."""

    key: str
    raw: bytes

    @property
    def digest(self) -> str:
        return digest(self.raw)


def digest(raw: bytes) -> str:
    """SHA-256 of a message's bytes: the caller's idempotence key when recording it."""
    return hashlib.sha256(raw).hexdigest()


class Source(Protocol):
    name: str  # the mailbox as shown to the operator, without a password
    kept: list[tuple[str, str]]  # (key, reason) of messages kept by `keep` in this session
    problems: list[str]  # messages the source itself could not fetch, one line each

    def messages(self) -> Iterator[Item]: ...
    def done(self, key: str) -> None: ...
    def keep(self, key: str, reason: str) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class _Base:
    name: str

    def __init__(self, name: str) -> None:
        self.name = name
        self.kept: list[tuple[str, str]] = []
        self.problems: list[str] = []

    def _fail(self, what: str) -> MailboxError:
        return MailboxError(f"mailbox {self.name}: {what}")

    def keep(self, key: str, reason: str) -> None:
        self.kept.append((key, " ".join(reason.split())))

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _tls_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    # Certificate and host name are always verified; a self-signed server is trusted through
    # its CA file, never by switching verification off.
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _network_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return " ".join(str(exc).split()) or type(exc).__name__


# --- IMAP ---------------------------------------------------------------------------------------


class ImapSource(_Base):
    def __init__(self, *, name: str, host: str, port: int, user: str, password: str, folder: str,
                 starttls: bool, ca_file: str | os.PathLike[str] | None, timeout: float) -> None:
        super().__init__(name)
        self.folder = folder
        context = _tls_context(ca_file)
        try:
            if starttls:
                self._box = MailBoxStartTls(host, port, timeout=timeout, ssl_context=context)
            else:
                self._box = MailBox(host, port, timeout=timeout, ssl_context=context)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._fail(_network_error(exc)) from None
        try:
            self._box.login(user, password, initial_folder=folder)
        except MailboxLoginError:
            self._logout()
            raise self._fail("login failed (wrong user name or password?)") from None
        except (OSError, imaplib.IMAP4.error) as exc:
            self._logout()
            raise self._fail(f"cannot open folder {folder!r}: {_network_error(exc)}") from None
        self._uidvalidity = self._status_uidvalidity()
        self._processed_ready = False

    def _status_uidvalidity(self) -> str:
        status = self._box.folder.status(self.folder, ["UIDVALIDITY"])
        return str(status.get("UIDVALIDITY", "0"))

    def _uid(self, key: str) -> str:
        validity, _, uid = key.partition(":")
        if validity != self._uidvalidity or not uid.isdigit():
            raise self._fail(f"message key {key!r} is not from this session of folder {self.folder!r}")
        return uid

    def messages(self) -> Iterator[Item]:
        try:
            for uid in self._box.uids("ALL"):
                raw = self._raw(uid)
                if raw is None:
                    self.problems.append(f"{self.name}: message UID {uid} not fetchable, left in place")
                    continue
                yield Item(f"{self._uidvalidity}:{uid}", raw)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._fail(_network_error(exc)) from None

    def _raw(self, uid: str) -> bytes | None:
        # BODY.PEEK[] returns the message exactly as stored and leaves \Seen alone.
        typ, data = self._box.client.uid("FETCH", uid, "(BODY.PEEK[])")
        if typ != "OK":
            return None
        for part in data:
            if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], bytes):
                return part[1]
        return None

    def done(self, key: str) -> None:
        uid = self._uid(key)
        try:
            if not self._processed_ready:
                if not self._box.folder.exists(PROCESSED_FOLDER):
                    self._box.folder.create(PROCESSED_FOLDER)
                self._processed_ready = True
            self._box.move([uid], PROCESSED_FOLDER)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._fail(f"cannot move message to {PROCESSED_FOLDER!r}: {_network_error(exc)}") from None

    def keep(self, key: str, reason: str) -> None:
        uid = self._uid(key)
        try:
            self._box.client.uid("STORE", uid, "+FLAGS", f"({UNREADABLE_KEYWORD})")
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._fail(f"cannot flag message: {_network_error(exc)}") from None
        super().keep(key, reason)

    def _logout(self) -> None:
        with contextlib.suppress(Exception):
            self._box.logout()

    def close(self) -> None:
        self._logout()


# --- POP3 ---------------------------------------------------------------------------------------


class Pop3Source(_Base):
    def __init__(self, *, name: str, host: str, port: int, user: str, password: str, starttls: bool,
                 ca_file: str | os.PathLike[str] | None, timeout: float) -> None:
        super().__init__(name)
        context = _tls_context(ca_file)
        try:
            if starttls:
                self._pop: poplib.POP3 = poplib.POP3(host, port, timeout=timeout)
                self._pop.stls(context)
            else:
                self._pop = poplib.POP3_SSL(host, port, timeout=timeout, context=context)
        except (OSError, poplib.error_proto) as exc:
            raise self._fail(_network_error(exc)) from None
        try:
            self._pop.user(user)
            self._pop.pass_(password)
        except poplib.error_proto:
            self._quit()
            raise self._fail("login failed (wrong user name or password?)") from None
        except OSError as exc:
            self._quit()
            raise self._fail(_network_error(exc)) from None
        self._numbers: dict[str, int] = {}

    def messages(self) -> Iterator[Item]:
        try:
            _, lines, _ = self._pop.uidl()
        except poplib.error_proto:
            raise self._fail("the server does not support UIDL, so messages cannot be told apart") from None
        except OSError as exc:
            raise self._fail(_network_error(exc)) from None
        for line in lines:
            number, _, uid = line.decode("ascii", errors="replace").partition(" ")
            self._numbers[uid.strip()] = int(number)
        for uid, number in list(self._numbers.items()):
            try:
                _, body, _ = self._pop.retr(number)
            except poplib.error_proto as exc:
                self.problems.append(f"{self.name}: message {uid} not fetchable ({exc}), left in place")
                continue
            except OSError as exc:
                raise self._fail(_network_error(exc)) from None
            yield Item(uid, b"\r\n".join(body) + b"\r\n")

    def done(self, key: str) -> None:
        number = self._numbers.get(key)
        if number is None:
            raise self._fail(f"message key {key!r} is not from this session")
        try:
            self._pop.dele(number)  # takes effect at QUIT (close); a broken session undoes it
        except (OSError, poplib.error_proto) as exc:
            raise self._fail(f"cannot delete message: {_network_error(exc)}") from None

    def _quit(self) -> None:
        with contextlib.suppress(Exception):
            self._pop.quit()

    def close(self) -> None:
        self._quit()


# --- Maildir --------------------------------------------------------------------------------------


class MaildirSource(_Base):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        if not ((path / "cur").is_dir() and (path / "new").is_dir()):
            raise self._fail("not a Maildir (no cur/ and new/ directories)")
        self._box = mailbox.Maildir(path, factory=None, create=False)
        self._processed: mailbox.Maildir | None = None

    def messages(self) -> Iterator[Item]:
        try:
            keys = sorted(self._box.keys())
        except OSError as exc:
            raise self._fail(_network_error(exc)) from None
        for key in keys:
            try:
                raw = self._box.get_bytes(key)
            except (KeyError, OSError) as exc:  # removed meanwhile, or unreadable file
                self.problems.append(f"{self.name}: message {key} could not be read ({type(exc).__name__})")
                continue
            yield Item(key, raw)

    def done(self, key: str) -> None:
        try:
            if self._processed is None:
                try:
                    self._processed = self._box.get_folder(PROCESSED_FOLDER)
                except mailbox.NoSuchMailboxError:
                    self._processed = self._box.add_folder(PROCESSED_FOLDER)
            # add() writes to tmp/ and renames, so the copy is complete before the original goes;
            # a crash in between leaves both, and the caller's digest check absorbs the duplicate.
            self._processed.add(self._box.get_message(key))
            self._box.remove(key)
        except (KeyError, OSError) as exc:
            raise self._fail(f"cannot move {key} to .{PROCESSED_FOLDER}: {_network_error(exc)}") from None


# --- mbox -------------------------------------------------------------------------------------------


class MboxSource(_Base):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        self.state_file = path.with_name(path.name + STATE_SUFFIX)
        try:
            text = self.state_file.read_text(encoding="ascii") if self.state_file.exists() else ""
        except OSError as exc:
            raise self._fail(f"cannot read {self.state_file}: {_network_error(exc)}") from None
        self._done = {line.strip() for line in text.splitlines() if line.strip()}

    def messages(self) -> Iterator[Item]:
        try:
            box = mailbox.mbox(self.path, factory=None, create=False)
        except (mailbox.NoSuchMailboxError, OSError) as exc:
            raise self._fail(_network_error(exc)) from None
        locked = False
        try:
            # Lock as the MTA does (fcntl + dot file) so a message being appended is not read
            # half-written; without write access to the directory we read unlocked.
            try:
                box.lock()
                locked = True
            except mailbox.ExternalClashError:
                raise self._fail("locked by another program; try again later") from None
            except PermissionError:
                pass
            fresh: list[Item] = []
            for key in box.iterkeys():
                raw = box.get_bytes(key)
                item = Item(digest(raw), raw)
                if item.key not in self._done:
                    fresh.append(item)
        except OSError as exc:
            raise self._fail(_network_error(exc)) from None
        finally:
            if locked:
                box.unlock()
            box.close()
        yield from fresh

    def done(self, key: str) -> None:
        if key in self._done:
            return
        try:
            with self.state_file.open("a", encoding="ascii") as state:
                state.write(key + "\n")
                state.flush()
                os.fsync(state.fileno())
        except OSError as exc:
            raise self._fail(f"cannot write {self.state_file}: {_network_error(exc)}") from None
        self._done.add(key)


# --- opening a source ---------------------------------------------------------------------------

_DEFAULT_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}


def open_source(spec: str, *, password: str | None = None, starttls: bool = False,
                ca_file: str | os.PathLike[str] | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> Source:
    """A `Source` for `spec`: ``imaps://user@host[:port]/FOLDER``, ``pop3s://user@host[:port]``,
    ``imap://`` / ``pop3://`` with `starttls` (or the schemes ``imap+starttls`` /
    ``pop3+starttls``), a Maildir directory or an mbox file. `ca_file` trusts a server whose
    certificate is not signed by a public CA (self-signed). Raises `MailboxError`."""
    if "://" not in spec:
        return _open_local(spec)
    try:
        parts = urlsplit(spec)
        scheme = parts.scheme.lower()
        if scheme.endswith("+starttls"):
            scheme, starttls = scheme.removesuffix("+starttls"), True
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        raise MailboxError(f"mailbox {_safe(spec)}: not a valid mailbox URL") from None
    user = unquote(parts.username or "")
    password = password if password is not None else (unquote(parts.password) if parts.password else None)
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    if scheme not in _DEFAULT_PORTS:
        raise MailboxError(f"mailbox {_safe(spec)}: unknown scheme {parts.scheme!r} "
                           "(imaps://, pop3s://, imap:// or pop3:// with STARTTLS, or a local path)")
    name = f"{scheme}{'+starttls' if starttls and scheme in ('imap', 'pop3') else ''}://{user}@{host}:{port}"
    name += f"/{folder}" if scheme.startswith("imap") else ""
    if scheme in ("imap", "pop3") and not starttls:
        raise MailboxError(f"mailbox {name}: refusing to log in without TLS; use {scheme}s:// or STARTTLS "
                           f"({scheme}+starttls://)")
    if not host or not user:
        raise MailboxError(f"mailbox {name}: the URL needs a user and a host (user@host)")
    if not password:
        raise MailboxError(f"mailbox {name}: no password given")
    if scheme.startswith("imap"):
        try:
            return ImapSource(name=name, host=host, port=port, user=user, password=password, folder=folder,
                              starttls=starttls, ca_file=ca_file, timeout=timeout)
        except ValueError as exc:  # imap-tools refuses STARTTLS on the implicit-TLS port
            raise MailboxError(f"mailbox {name}: {exc}") from None
    return Pop3Source(name=name, host=host, port=port, user=user, password=password, starttls=starttls,
                      ca_file=ca_file, timeout=timeout)


def _safe(spec: str) -> str:
    """`spec` without a password that may be written into it."""
    try:
        parts = urlsplit(spec)
    except ValueError:
        return spec.split("://", 1)[0] + "://…"
    if parts.password is None:
        return spec
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _open_local(spec: str) -> Source:
    path = Path(spec).expanduser()
    if path.is_dir():
        return MaildirSource(path)
    if path.is_file():
        return MboxSource(path)
    raise MailboxError(f"mailbox {path}: no such Maildir directory or mbox file")
