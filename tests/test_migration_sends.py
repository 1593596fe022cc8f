"""Migration 11: a send is keyed by (issue, list, segment) and may be scheduled. An upgraded
database keeps every journal row and ends up with the same schema as a fresh one, on both
back-ends."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from newsletter.audience.store import Store
from newsletter.delivery.tables import deliveries, send_workers, sends

pytestmark = pytest.mark.backends


def _journal_schema(engine: sa.Engine) -> dict[str, object]:
    inspector = sa.inspect(engine)
    shape: dict[str, object] = {}
    for table in ("sends", "deliveries", "send_workers"):
        shape[table] = (
            [(c["name"], c["nullable"]) for c in inspector.get_columns(table)],
            sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
            sorted(c["name"] for c in inspector.get_check_constraints(table)),
            sorted((f["referred_table"], tuple(f["constrained_columns"]),
                    f.get("options", {}).get("ondelete")) for f in inspector.get_foreign_keys(table)),
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
        )
    return shape


def _old_send(store: Store) -> None:
    """A send with a worker and two deliveries, written as version 10 had them."""
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO lists (name) VALUES ('news')"))
        list_id = conn.execute(sa.text("SELECT id FROM lists WHERE name = 'news'")).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO sends (id, issue_slug, list_id, content_hash, subject, status, transport) "
            "VALUES (7, '2026-02', :list, 'h', 'Februar', 'finished', 'outbox')"), {"list": list_id})
        conn.execute(sa.text(
            "INSERT INTO deliveries (send_id, subscriber_id, email, status, attempts, possibly_duplicated) "
            "VALUES (7, 1, 'a@example.org', 'sent', 1, true), (7, 2, 'b@example.org', 'skipped', 0, false)"))
        conn.execute(sa.text(
            "INSERT INTO send_workers (worker_id, send_id, host, pid, started_at, heartbeat_at, "
            "lease_expires_at) VALUES ('w1', 7, 'h', 1, :t, :t, :t)"), {"t": "2026-01-01 00:00:00"})


def test_upgrade_keeps_the_journal_and_equals_a_fresh_schema(database_url: str,
                                                            fresh_database_url: str) -> None:
    old = Store.open(database_url, migrate_to=10)
    _old_send(old)
    old.close()
    with Store.open(database_url) as upgraded:  # runs migration 11
        with upgraded.engine.connect() as conn:
            send = conn.execute(sa.select(sends)).one()
            rows = conn.execute(sa.select(deliveries).order_by(deliveries.c.subscriber_id)).all()
            workers = conn.execute(sa.select(send_workers)).all()
        assert (send.id, send.issue_slug, send.segment, send.status) == (7, "2026-02", "", "finished")
        assert send.scheduled_at is None and send.issue_path is None
        assert [(r.email, r.status, r.possibly_duplicated) for r in rows] == [
            ("a@example.org", "sent", True), ("b@example.org", "skipped", False)]
        assert [w.worker_id for w in workers] == ["w1"]
        upgraded_shape = _journal_schema(upgraded.engine)
        # Deleting the send still cascades to its rows: the children point at the new table.
        with upgraded.engine.begin() as conn:
            conn.execute(sends.delete())
            assert conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar_one() == 0
    with Store.open(fresh_database_url) as fresh:
        assert _journal_schema(fresh.engine) == upgraded_shape


def test_one_issue_goes_to_two_segments_of_a_list_but_each_once(database_url: str) -> None:
    with Store.open(database_url) as store:
        store.create_list("news")
        list_id = store.get_list("news").id
        values = {"issue_slug": "2026-02", "list_id": list_id, "content_hash": "h",
                  "subject": "s", "status": "finished", "transport": "t"}
        with store.engine.begin() as conn:
            conn.execute(sends.insert().values(**values))
            conn.execute(sends.insert().values(**values, segment="jena"))
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(sends.insert().values(**values, segment="jena"))
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(sends.insert().values(**{**values, "status": "sleeping"}))
