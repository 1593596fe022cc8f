"""A throw-away Dovecot (IMAPS + POP3S) on 127.0.0.1 for the mailbox tests.

Its own configuration in a temporary directory (nothing of /etc/dovecot is read), TLS only with
a self-signed certificate made here by `openssl` for ``localhost`` / ``127.0.0.1``, one user from
a passwd-file, Maildir storage. Debian's `dovecot-imapd` and `dovecot-pop3d` provide the server
(`apt-get install -y dovecot-imapd dovecot-pop3d`), `openssl` the certificate tool.

Dovecot refuses to access mail as root, so under root the mail processes run as `MAIL_USER`
(`nobody`) and the mail directory is handed to it; the login processes run as the package's
`dovenull`. Started with `dovecot -c CONFIG`, stopped with `dovecot -c CONFIG stop`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ports import free_port

USER = "bounces"
PASSWORD = "s3cret-feedback-pw"
MAIL_USER = "nobody"


class ImapServerUnavailable(RuntimeError):
    """Dovecot (or openssl) is not installed here."""


@dataclass
class ImapServer:
    base: Path
    imaps_port: int
    pop3s_port: int
    config: Path
    ca_file: Path  # the self-signed certificate: pass as ca_file to trust it
    binary: str
    user: str = USER
    password: str = PASSWORD

    def imaps_url(self, folder: str = "INBOX") -> str:
        return f"imaps://{self.user}@127.0.0.1:{self.imaps_port}/{folder}"

    def pop3s_url(self) -> str:
        return f"pop3s://{self.user}@127.0.0.1:{self.pop3s_port}"

    @property
    def maildir(self) -> Path:
        return self.base / "mail" / self.user

    def stop(self) -> None:
        subprocess.run([self.binary, "-c", str(self.config), "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        pid_file = self.base / "run" / "master.pid"
        for _ in range(50):
            if not pid_file.exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)


def _wait_for(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def start_server() -> ImapServer:
    found = {"dovecot": shutil.which("dovecot", path=f"{os.environ.get('PATH', '')}:/usr/sbin"),
             "openssl": shutil.which("openssl")}
    missing = [name for name, path in found.items() if not path]
    has_protocols = Path("/usr/lib/dovecot/imap").exists() and Path("/usr/lib/dovecot/pop3").exists()
    if missing or not has_protocols:
        raise ImapServerUnavailable(
            "Dovecot IMAP/POP3 server not found: install Debian's `dovecot-imapd dovecot-pop3d` "
            "(and `openssl`), e.g. `apt-get install -y dovecot-imapd dovecot-pop3d openssl`")
    base = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
    os.chmod(base, 0o755)  # login processes (user dovenull) must reach their sockets below
    try:
        return _start(base, str(found["dovecot"]))
    except BaseException:
        subprocess.run([str(found["dovecot"]), "-c", str(base / "dovecot.conf"), "stop"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        shutil.rmtree(base, ignore_errors=True)
        raise


def _start(base: Path, binary: str) -> ImapServer:
    cert, key = base / "cert.pem", base / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, check=False)
    if made.returncode:
        raise ImapServerUnavailable(f"openssl could not make a certificate: {made.stderr.strip()}")

    if os.geteuid() == 0:
        entry = pwd.getpwnam(MAIL_USER)
        uid, gid = entry.pw_uid, entry.pw_gid
    else:
        uid, gid = os.getuid(), os.getgid()
    mail = base / "mail"
    (mail / USER).mkdir(parents=True)
    for path in (mail, mail / USER):
        os.chown(path, uid, gid)
    # nodelay: a failed login (the tests make some on purpose) answers at once, without the
    # per-IP penalty that would slow down the next test.
    (base / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::nodelay=yes\n")

    imaps_port, pop3s_port = free_port(), free_port()
    login_user = "dovenull" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
    internal_user = "dovecot" if os.geteuid() == 0 else login_user
    config = base / "dovecot.conf"
    config.write_text(f"""
protocols = imap pop3
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
instance_name = newsletter-test-{imaps_port}
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
default_login_user = {login_user}
default_internal_user = {internal_user}
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
# The tests log in with wrong passwords on purpose: no delay and no per-IP penalty for that.
auth_failure_delay = 0
login_trusted_networks = 127.0.0.1/32
first_valid_uid = 1
mail_location = maildir:{mail}/%u
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
    ssl = yes
  }}
}}
""")
    # The daemon inherits stdout/stderr: a pipe would never reach EOF, so they go to a file.
    log, output = base / "dovecot.log", base / "dovecot.out"
    with output.open("wb") as out:
        started = subprocess.run([binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, check=False)
    if started.returncode:
        raise ImapServerUnavailable(f"dovecot did not start: {output.read_text(errors='replace').strip()} "
                                    f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
    deadline = time.monotonic() + 15
    if not (_wait_for(imaps_port, deadline) and _wait_for(pop3s_port, deadline)):
        raise ImapServerUnavailable("dovecot did not open its ports: "
                                    f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
    return ImapServer(base=base, imaps_port=imaps_port, pop3s_port=pop3s_port, config=config, ca_file=cert,
                      binary=binary)
