"""Migration 12: the `approvals` table. An upgraded database keeps its sends and gets the same
table as a fresh one, on both back-ends; approvals are kept as history, one row each."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from newsletter.audience.store import Store
from newsletter.db.schema import utcnow
from newsletter.delivery.tables import approvals, sends

pytestmark = pytest.mark.backends


def _shape(engine: sa.Engine) -> object:
    inspector = sa.inspect(engine)
    return ([(c["name"], c["nullable"]) for c in inspector.get_columns("approvals")],
            inspector.get_pk_constraint("approvals")["constrained_columns"],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes("approvals")))


def test_upgrade_adds_approvals_like_a_fresh_database(database_url: str,
                                                      fresh_database_url: str) -> None:
    old = Store.open(database_url, migrate_to=11)
    assert not sa.inspect(old.engine).has_table("approvals")
    list_id = old.create_list("news").id
    with old.engine.begin() as conn:
        conn.execute(sends.insert().values(issue_slug="2026-02", list_id=list_id, content_hash="h",
                                           subject="s", status="finished", transport="t"))
    old.close()
    with Store.open(database_url) as upgraded:  # runs migration 12
        assert upgraded.schema_version() == 12
        with upgraded.engine.begin() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(sends)).scalar_one() == 1
            for by in ("Anna", "Bert"):
                conn.execute(approvals.insert().values(
                    issue_slug="2026-02", approved_by=by, approved_at=utcnow(),
                    issue_path="issues/2026-02.yaml", issue_hash="i", templates_hash="t",
                    config_hash="c", content_hash="m", parts={"issue": {"issue": "i"}}))
            rows = conn.execute(sa.select(approvals).order_by(approvals.c.id)).all()
        assert [(r.approved_by, r.parts) for r in rows] == [
            ("Anna", {"issue": {"issue": "i"}}), ("Bert", {"issue": {"issue": "i"}})]
        upgraded_shape = _shape(upgraded.engine)
    with Store.open(fresh_database_url) as fresh:
        assert _shape(fresh.engine) == upgraded_shape
