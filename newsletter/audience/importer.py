"""CSV import of list members: the rows `audience/csvfile.py` reads, applied to a list.

Which status a row gets, and that nobody who unsubscribed, bounced or complained is
re-activated, is decided by `editor_target` / `editor_change` in `audience/statuses.py` (the
same rules as `Store.add_subscriber`); suppressed addresses are skipped. The library is UI-free:
progress goes to a callback.

A large import must not lock other writers out (serve's unsubscribes, a send's journal) and must
never be left half done. It runs in three steps (docs/data-model.md, "CSV import"):

1. read — the file is streamed `batch` records at a time into a TEMPORARY staging table of the
   import's own connection (appended in file order), which is then copied sorted by address
   into a second one, its duplicates merged into the first row, and planned (`decide`:
   subscriber, membership and suppression looked up). Only reads of the database: nobody waits
   for this step.
2. publish the new subscribers — in key order, a write transaction per batch (`batch` rows;
   more for a very large file, about CREATE_TRANSACTIONS, at most MAX_BATCH rows: what another
   writer may wait): each batch re-checks its rows, then creates the subscribers, their
   memberships and consent-log entries, and records the ids with the import (`imports`,
   `import_subscribers`). A watchdog process, the process itself on an error, or the next
   import undoes the batches of an import that does not finish.
3. final transaction — the last batch, and every row of people who were there before,
   re-checked against the database as it is now (someone who unsubscribed in the meantime is
   skipped, not re-activated; an erased address is dropped), then joins, status changes,
   consent-log entries and filled-in details with a few set-based statements; the import's
   record goes. Existing people change at once or not at all.

A dry run does step 1 only and changes nothing. The report says what happened to every row.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience.addresses import key_hash
from newsletter.audience.csvfile import (
    ProgressCallback,
    open_csv,
)
from newsletter.audience.import_report import (
    ADD,
    CHANGE,
    EXISTING,
    FILLABLE,
    JOIN,
    REFUSED,
    SUPPRESSED,
    UNCHANGED,
    ImportReport,
    Skipped,
    count_plan,
    decide,
    fill_details,
)
from newsletter.audience.import_stage import (
    CREATE_TRANSACTIONS,
    MAX_BATCH,
    SUPPRESSION_SLACK,
    WRITE_BATCH,
    Staging,
    Watchdog,
    _lock,
    delete_created,
    is_dead,
)
from newsletter.audience.records import MailingList
from newsletter.audience.statuses import OPTED_OUT
from newsletter.audience.store import Store
from newsletter.audience.tables import (
    consent_log,
    import_subscribers,
    imports,
    memberships,
    new_token_id,
    subscribers,
    suppressions,
)
from newsletter.db.schema import NOW, chunked, utcnow


def import_csv(store: Store, path: Path, mailing_list: MailingList, *, confirmed: bool = False,
               dry_run: bool = False, on_progress: ProgressCallback | None = None,
               batch: int = WRITE_BATCH) -> ImportReport:
    """Import a CSV into a list; the report says what happened to every row. Invalid rows are
    reported in `report.problems` and left out. New subscribers are published in batches of
    `batch` rows or more, existing ones in one transaction at the end; an import that fails or
    is killed is undone (docs/data-model.md, "CSV import"). `dry_run` changes nothing and
    reports the same."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    with open_csv(Path(path)) as csv_file:
        report = ImportReport(csv_file.file, mailing_list.name, dry_run, confirmed,
                              csv_file.encoding, csv_file.delimiter, problems=csv_file.problems)
        _Import(store, csv_file, mailing_list.id, Path(path).name, report, batch, on_progress).run()
    return report


class _Import(Staging):
    """One import run: the read-and-plan phase (`Staging`), then the writes."""

    def run(self) -> None:
        # One connection for the whole import: the staging table is TEMPORARY (per connection).
        with self.store.engine.connect() as conn:
            self.conn = conn
            try:
                self._sqlite_settings()
                with self.transaction():
                    for table in (self.read_rows, self.staged):
                        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table.name}")
                        table.create(conn)
                    self._load_suppressions(conn)
                    # Without subscribers at the start every row is new (anyone created meanwhile
                    # is found when the import publishes).
                    self.anyone = conn.execute(sa.select(subscribers.c.id).limit(1)).first() is not None
                if not self.dry_run:
                    self._clean_up_interrupted()
                self._read()
                if not self.dry_run:
                    self._write()
                self._count()
            except BaseException:
                self._forget_created()
                raise
            finally:
                if self.watchdog is not None:  # with the record still there: undo it now
                    self.watchdog.finish(undo=self.import_id is not None)
                # Closed, not returned to the pool: the staging table and the import's settings
                # go with it (quicker than dropping a table of a million rows).
                conn.invalidate()

    def _write(self) -> None:
        if self.tally is None:
            with self.transaction() as conn:
                self.tally = count_plan(conn, self.staged)
        tally = self.tally
        new = tally[ADD]
        self.to_write = new + tally[JOIN] + tally["opted_out"] + tally["confirmed_pending"] \
            + tally["fill"]
        if not self.to_write:
            return  # nothing to write: the plan's reads are the import
        # Each write transaction rewrites the pages of the token_id index it touches, and random
        # tokens touch about one page per row until a batch spans the whole index: so a large
        # import publishes its new subscribers in about CREATE_TRANSACTIONS transactions — but
        # never more than MAX_BATCH rows in one, which bounds how long others wait for the lock.
        self.create_batch = min(max(self.batch, -(-new // CREATE_TRANSACTIONS)),
                                max(self.batch, MAX_BATCH))
        after, remaining = 0, new  # the new subscribers in key order: `seq` order
        with self.transaction() as conn:
            last, size = self._next_batch(conn, after, remaining)
        if last is not None:
            self._start_record()
        while last is not None:  # the last `batch` rows go in with the final transaction
            with self.transaction(write=True) as conn:
                _lock(conn)
                self._renew(conn)
                self._publish_new(conn, after, last)
            remaining -= size
            with self.transaction() as conn:
                after, (last, size) = last, self._next_batch(conn, last, remaining)
            self._progress(new - remaining)
        self._publish(after)

    def _next_batch(self, conn: Connection, after: int, remaining: int) -> tuple[int | None, int]:
        """(last seq, size) of the next batch of new subscribers after `after`, of up to
        `create_batch` rows; (None, 0) when no more than `batch` remain (the final transaction
        publishes those)."""
        if remaining <= self.batch:
            return None, 0
        size = min(self.create_batch, remaining - self.batch)
        s = self.staged
        last = conn.execute(
            sa.select(s.c.seq).where(s.c.action == ADD, s.c.seq > after)
            .order_by(s.c.seq).offset(size - 1).limit(1)).scalar()
        return last, size

    def _start_record(self) -> None:
        """Record this import before its first batch, and start the watchdog that undoes the
        batches if this process dies (`import_stage.Watchdog`)."""
        now = utcnow()
        with self.transaction(write=True) as conn:
            self.import_id = conn.execute(imports.insert().values(
                list_id=self.list_id, file=self.file_name[:300], host=socket.gethostname(),
                pid=os.getpid(), started_at=now, heartbeat_at=now)).inserted_primary_key[0]
        self.watchdog = Watchdog(self.store.engine.url.render_as_string(hide_password=False),
                                 self.import_id)

    def _renew(self, conn: Connection) -> None:
        conn.execute(imports.update().where(imports.c.id == self.import_id)
                     .values(heartbeat_at=utcnow()))

    def _publish_new(self, conn: Connection, after: int, last: int | None) -> None:
        """Inside a write transaction: the staged new subscribers with seqs in (after, last]
        (None: to the end) re-checked against the database as it is now, created, put on the
        list and logged. Their ids are recorded with the import (undone if it dies)."""
        s = self.staged
        where = [s.c.action == ADD, s.c.subscriber_id.is_(None), s.c.seq > after]
        if last is not None:
            where.append(s.c.seq <= last)
        changed = self._drifted_new(conn, where)
        if changed:
            self._replan(conn, changed)
        # Ids given here, in key order (base + row number), so the memberships and consent-log
        # entries need no look-up of what was created: the same numbering, three statements.
        # When the rows are consecutive in `seq` (the usual batch: all new) the number is the
        # seq moved by a constant, without a window function over the rows.
        created, first, final = conn.execute(sa.select(
            sa.func.count(), sa.func.min(s.c.seq), sa.func.max(s.c.seq)).where(*where)).one()
        if not created:
            return
        base = self._id_base(conn)
        number = ((base + 1 - first) + s.c.seq if final - first + 1 == created
                  else base + sa.func.row_number().over(order_by=s.c.seq))
        conn.execute(subscribers.insert().from_select(
            ["id", "email", "email_key", "name", "attributes", "token_id"],
            sa.select(number, s.c.email, s.c.email_key, s.c.name, s.c.attributes, s.c.token_id)
            .where(*where)))
        if conn.dialect.name == "postgresql":  # the sequence goes past the ids given here
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), :last)"),
                         {"last": base + created})
        if self.import_id is not None:
            conn.execute(import_subscribers.insert().values(
                import_id=self.import_id, first_id=base + 1, last_id=base + created))
        conn.execute(memberships.insert().from_select(
            ["subscriber_id", "list_id", "status"],
            sa.select(number, sa.literal(self.list_id), s.c.target).where(*where)))
        conn.execute(consent_log.insert().from_select(
            ["subscriber_id", "list_id", "action", "source", "detail"],
            sa.select(number, sa.literal(self.list_id), s.c.target, sa.literal("import"),
                      self._detail(s.c.line, s.c.target)).where(*where)))

    def _id_base(self, conn: Connection) -> int:
        """The id after which this write transaction may number new subscribers: the largest
        in use (what SQLite gives next anyway); on PostgreSQL also past the sequence (the table
        is locked: nobody else takes a number meanwhile)."""
        largest = conn.execute(sa.select(sa.func.max(subscribers.c.id))).scalar() or 0
        if conn.dialect.name == "postgresql":
            sequence = conn.execute(sa.text("SELECT pg_sequence_last_value("
                                            "pg_get_serial_sequence('subscribers', 'id')::regclass)")
                                    ).scalar() or 0
            largest = max(largest, sequence)
        return int(largest)

    def _detail(self, line: sa.ColumnElement[int], target: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """The consent-log detail of an imported row: `<file> line N; why`."""
        consent = ("editor confirmed prior consent" if self.confirmed
                   else "not confirmed: double opt-in pending")
        why = sa.case((target.in_(sorted(OPTED_OUT)),
                       "status " + target + " carried over from the file"), else_=consent)
        return sa.literal(self.file_name) + " line " + sa.cast(line, sa.String) + "; " + why

    def _drifted_new(self, conn: Connection, where: list[sa.ColumnElement[bool]]) -> set[int]:
        """Seqs of new subscribers about to be created whose address someone created or
        suppressed since the import planned them."""
        s = self.staged
        seqs = set(conn.execute(sa.select(s.c.seq).select_from(
            s.join(subscribers, subscribers.c.email_key == s.c.email_key)).where(*where)).scalars())
        new_hashes = self._new_suppressions(conn)
        if new_hashes:
            seqs.update(seq for seq, key in conn.execute(
                sa.select(s.c.seq, s.c.email_key).where(*where)) if key_hash(key) in new_hashes)
        return seqs

    def _new_suppressions(self, conn: Connection) -> set[str]:
        return set(conn.execute(sa.select(suppressions.c.email_hash).where(
            suppressions.c.at >= self.started - SUPPRESSION_SLACK)).scalars())

    def _publish(self, after: int) -> None:
        """The final transaction: the last new subscribers; every other planned row re-checked,
        then memberships, status changes, consent log and details, set-based; the import's
        record deleted. The batches before it published only new subscribers (undone by the
        watchdog or the next import if this one dies): everything that changes people who were
        there before goes in here, at once or not at all."""
        if self.conn.dialect.name == "sqlite":  # the publish waits for the disk, as every write
            self.conn.connection.driver_connection.execute("PRAGMA synchronous = FULL")
        with self.transaction(write=True) as conn:
            _lock(conn)
            # Each statement below is a pass over the staging table, under the write lock: left
            # out when the plan (`tally`, None once anything was planned again) has no such rows.
            if self.tally is None or self.tally["existing"]:
                changed = self._drifted(conn)
                if changed:
                    self._replan(conn, changed)
            self._publish_new(conn, after, None)
            tally = self.tally
            self.report.updated = self._fill_in(conn) if tally is None or tally["fill"] else 0
            if tally is None or tally[JOIN] or tally["opted_out"] + tally["confirmed_pending"]:
                self._join_and_change(conn)
            if self.import_id is not None:
                conn.execute(import_subscribers.delete().where(
                    import_subscribers.c.import_id == self.import_id))
                conn.execute(imports.delete().where(imports.c.id == self.import_id))
            # The last progress call comes from inside this transaction, before its commit.
            self._progress(self.to_write)
        self.import_id = None

    def _join_and_change(self, conn: Connection) -> None:
        """Inside the final transaction: memberships, status changes and consent-log entries of
        people who were there before (and of new ones `_replan` created), set-based."""
        s = self.staged
        # Existing subscribers joining, and new ones `_replan` created in here.
        earlier = sa.or_(s.c.action.in_((JOIN, CHANGE)),
                         sa.and_(s.c.action == ADD, s.c.subscriber_id.is_not(None)))
        conn.execute(memberships.insert().from_select(
            ["subscriber_id", "list_id", "status"],
            sa.select(s.c.subscriber_id, sa.literal(self.list_id), s.c.target)
            .where(s.c.action.in_((ADD, JOIN)), s.c.subscriber_id.is_not(None))
            .order_by(s.c.subscriber_id)))
        targets = conn.execute(sa.select(s.c.target).where(s.c.action == CHANGE).distinct()).scalars()
        for target in list(targets):
            conn.execute(memberships.update().where(
                memberships.c.list_id == self.list_id,
                memberships.c.subscriber_id.in_(
                    sa.select(s.c.subscriber_id).where(s.c.action == CHANGE, s.c.target == target)),
            ).values(status=target, updated_at=NOW, requested_name=None))
        conn.execute(consent_log.insert().from_select(
            ["subscriber_id", "list_id", "action", "source", "detail"],
            sa.select(s.c.subscriber_id, sa.literal(self.list_id), s.c.target,
                      sa.literal("import"), self._detail(s.c.line, s.c.target))
            .where(earlier).order_by(s.c.subscriber_id)))

    def _drifted(self, conn: Connection) -> set[int]:
        """Seqs of people who were there before (not new: `_publish_new` checks those) whose
        plan no longer fits the database: the membership's status is not the one planned on,
        the subscriber is gone or the id was given to someone else, or the address was
        suppressed since the import started."""
        s, m = self.staged, memberships
        existing = s.c.action.in_(EXISTING)
        query = (
            sa.select(s.c.seq)
            .select_from(s.outerjoin(subscribers, subscribers.c.id == s.c.subscriber_id)
                         .outerjoin(m, sa.and_(m.c.subscriber_id == s.c.subscriber_id,
                                               m.c.list_id == self.list_id)))
            .where(existing, sa.or_(
                subscribers.c.id.is_(None),  # erased
                subscribers.c.email_key != s.c.email_key,  # … and the id given to someone else
                m.c.status.is_distinct_from(s.c.seen_status))))
        seqs = set(conn.execute(query).scalars())
        new_hashes = self._new_suppressions(conn)
        if new_hashes:
            seqs.update(seq for seq, key in conn.execute(
                sa.select(s.c.seq, s.c.email_key).where(existing)) if key_hash(key) in new_hashes)
        return seqs

    def _replan(self, conn: Connection, seqs: set[int]) -> None:
        """Plan these rows again on what the database holds now (inside the publish)."""
        s = self.staged
        self.tally = None  # the plan changed: `_count` counts again
        for part in chunked(sorted(seqs)):
            rows = conn.execute(sa.select(s).where(s.c.seq.in_(part))).all()
            found, statuses, suppressed = self._look_up(conn, [r.email_key for r in rows])
            for row in rows:
                person = found.get(row.email_key)
                current = statuses.get(person.id) if person else None
                # The subscriber this import created is still new to the list unless someone has
                # put them on it in the meantime.
                new = person is None or (person.token_id == row.token_id and current is None)
                action, target = decide(row.file_status, self.confirmed, not new, current,
                                         row.email_key in suppressed)
                values: dict[str, Any] = {"action": action, "target": target, "seen_status": current,
                                          "subscriber_id": person.id if person else None}
                if action == ADD and person is None:  # gone without a suppression: create anew
                    token_id = row.token_id or new_token_id()
                    values["subscriber_id"] = conn.execute(subscribers.insert().values(
                        email=row.email, email_key=row.email_key, name=row.name,
                        attributes=row.attributes, token_id=token_id,
                    )).inserted_primary_key[0]
                    values["token_id"] = token_id
                values["fill"] = action in FILLABLE and fill_details(
                    person.name, person.attributes, row.name, row.attributes) is not None
                conn.execute(s.update().where(s.c.seq == row.seq).values(**values))

    def _fill_in(self, conn: Connection) -> int:
        """Fill in missing names and attributes of existing subscribers (re-read inside the
        publish, so nothing written meanwhile is overwritten); how many changed."""
        s = self.staged
        changed = 0
        after = 0
        while page := conn.execute(
            sa.select(s.c.seq, s.c.subscriber_id, s.c.name, s.c.attributes)
            .where(s.c.fill, s.c.action.in_(FILLABLE), s.c.seq > after)
            .order_by(s.c.seq).limit(self.batch)).all():
            after = page[-1].seq
            current = {r.id: r for r in conn.execute(
                sa.select(subscribers.c.id, subscribers.c.name, subscribers.c.attributes)
                .where(subscribers.c.id.in_([row.subscriber_id for row in page])))}
            updates = []
            for row in page:
                person = current.get(row.subscriber_id)
                filled = person and fill_details(person.name, person.attributes, row.name, row.attributes)
                if filled:
                    updates.append({"_id": row.subscriber_id, "_name": filled[0],
                                    "_attributes": filled[1]})
            if updates:
                conn.execute(subscribers.update().where(subscribers.c.id == sa.bindparam("_id"))
                             .values(name=sa.bindparam("_name"),
                                     attributes=sa.bindparam("_attributes")), updates)
            changed += len(updates)
        return changed

    # the report ---------------------------------------------------------------------------------

    def _count(self) -> None:
        s, report = self.staged, self.report
        with self.transaction() as conn:
            # A full pass over the staging table: not again if the plan `_write` counted stands.
            tally = self.tally if self.tally is not None else count_plan(conn, self.staged)
            report.added, report.joined = tally[ADD], tally[JOIN]
            report.opted_out, report.confirmed_pending = tally["opted_out"], tally["confirmed_pending"]
            report.unchanged = tally[UNCHANGED]
            if self.dry_run:
                report.updated = tally["fill"]
            for line, email, action, seen in () if not tally["skipped"] else conn.execute(
                sa.select(s.c.line, s.c.email, s.c.action, s.c.seen_status)
                .where(s.c.action.in_((REFUSED, SUPPRESSED))).order_by(s.c.line)
            ):
                reason = ("on the suppression list" if action == SUPPRESSED
                          else f"{seen}; imports never re-activate")
                report.skipped.append(Skipped(line, email, reason))

    # interrupted imports --------------------------------------------------------------------------

    def _clean_up_interrupted(self) -> None:
        """Delete what imports that died before their publish left behind: the subscribers they
        created that are still on no list and in no consent log (`imports`, docs/data-model.md)."""
        now = utcnow()
        with self.transaction() as conn:
            dead = [row.id for row in conn.execute(sa.select(imports)) if is_dead(row, now)]
        for import_id in dead:
            delete_created(self.store, import_id)

    def _forget_created(self) -> None:
        """After a failure: delete the subscribers this import created (best effort; what is
        left is deleted by the next import)."""
        if self.import_id is None:
            return
        with contextlib.suppress(Exception):  # the original error matters; the watchdog or the
            delete_created(self.store, self.import_id)  # next import cleans up
            self.import_id = None
