"""`newsletter db status` / `db upgrade`: where a database's schema stands, and bringing it up.

Every command that opens the store upgrades the schema itself (`Store.open`), so a single
machine never needs these. With several machines on one PostgreSQL database an operator runs
`db upgrade` once, from the deployment step, before the new version starts anywhere; a process
of an older version then refuses the newer schema with one line instead of guessing.
Looking (`status`) changes nothing: a SQLite file that does not exist yet is not created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter.db.engine import make_sqlite_directory, open_engine, write_transaction
from newsletter.db.migrations import MIGRATIONS, SCHEMA_VERSION, current_version, migrate, schema_version


@dataclass(frozen=True)
class SchemaStatus:
    """A database's schema version against the one this program writes."""

    url: str  # password hidden
    backend: str  # "sqlite" | "postgresql"
    exists: bool  # False: a SQLite file not created yet
    version: int  # 0: empty
    target: int = SCHEMA_VERSION
    pending: list[tuple[int, str]] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return self.version == self.target

    @property
    def newer(self) -> bool:
        """The database was upgraded by a newer program than this one."""
        return self.version > self.target

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "backend": self.backend, "exists": self.exists,
                "version": self.version, "target": self.target, "up_to_date": self.up_to_date,
                "pending": [{"version": v, "description": d} for v, d in self.pending]}


def _pending(version: int) -> list[tuple[int, str]]:
    return [(v, description) for v, description, _step in MIGRATIONS if v > version]


def _shown(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def schema_status(url: str) -> SchemaStatus:
    """Read the schema version of the database at `url` without changing anything."""
    sa_url = sa.make_url(url)
    backend = sa_url.get_backend_name()
    if (backend == "sqlite" and sa_url.database not in (None, "", ":memory:")
            and not Path(sa_url.database).exists()):
        return SchemaStatus(url=sa_url.render_as_string(hide_password=True), backend=backend,
                                exists=False, version=0, pending=_pending(0))
    engine = open_engine(url)  # its error handler turns server and file failures into one line
    try:
        with engine.connect() as conn:
            version = current_version(conn) if sa.inspect(conn).has_table(schema_version.name) else 0
    finally:
        engine.dispose()
    return SchemaStatus(url=_shown(engine), backend=backend, exists=True, version=version,
                        pending=_pending(version))


def upgrade(url: str) -> list[tuple[int, str]]:
    """Apply the pending migrations in one transaction; the steps applied (empty: was current).
    A database newer than this program raises `DatabaseError`; so does an unreachable one."""
    make_sqlite_directory(url)
    engine = open_engine(url)
    try:
        with write_transaction(engine) as conn:
            has_table = sa.inspect(conn).has_table(schema_version.name)
            before = current_version(conn) if has_table else 0
            after = migrate(conn)
    finally:
        engine.dispose()
    return [(v, d) for v, d, _step in MIGRATIONS if before < v <= after]
