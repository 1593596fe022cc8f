"""A throw-away PostgreSQL cluster for the test run (and the benches): initdb + pg_ctl in a
temporary directory, listening on 127.0.0.1 only, trust authentication, no fsync.

Debian's `postgresql` package provides the binaries (`scripts/bootstrap --system` installs it).
PostgreSQL refuses to run as root, so under root the cluster runs as the `postgres` user (or
`nobody`) through `runuser`; the directory is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ports import free_port


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parent.parent.name))
    if versions:
        return Path(versions[-1]).parent
    raise ClusterUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: install "
                             "Debian's `postgresql` (scripts/bootstrap --system does)")


@dataclass
class Cluster:
    base: Path
    port: int
    bindir: Path
    user: str | None  # the OS user the server runs as, when we are root

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.base)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


def start_cluster() -> Cluster:
    bindir = _bindir()
    base = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(base=base, port=free_port(), bindir=bindir, user=user)
    done = cluster._run("initdb", "-D", str(base / "data"), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--locale=C", "--no-sync")
    if done.returncode:
        shutil.rmtree(base, ignore_errors=True)
        raise ClusterUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
    options = (f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {base} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               "-c max_connections=300 -c shared_buffers=64MB")
    done = cluster._run("pg_ctl", "-D", str(base / "data"), "-o", options,
                        "-l", str(base / "server.log"), "-w", "-t", "60", "start")
    if done.returncode:
        log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise ClusterUnavailable(f"pg_ctl start failed: {done.stderr.strip()} {log[-2000:]}")
    return cluster
