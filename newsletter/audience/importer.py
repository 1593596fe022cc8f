"""CSV import of list members: the rows `audience/csvfile.py` reads, applied to a list.

Which status a row gets, and that nobody who unsubscribed, bounced or complained is
re-activated, is decided by `editor_target` / `editor_change` in `audience/statuses.py` (the
same rules as `Store.add_subscriber`); suppressed addresses are skipped. The library is UI-free:
progress goes to a callback.

A large import must not lock other writers out (serve's unsubscribes, a send's journal) and must
never be half visible. It runs in three steps (docs/data-model.md, "CSV import"):

1. read — the file is streamed `batch` records at a time into a TEMPORARY staging table of the
   import's own connection (appended in file order), which is then indexed by address, its
   duplicates merged into the first row, and planned (`decide`: subscriber, membership and
   suppression looked up). Only reads of the database: nobody waits for this step.
2. create — the new subscribers are inserted in key order, `batch` rows per write transaction
   (more for a very large file: at most CREATE_TRANSACTIONS); other writers get the lock in
   between. They are on no list yet, so nothing of the import is visible in a list. The import
   (`imports`) and the ids it created (`import_subscribers`) are recorded with them: if the
   process dies, the next import deletes the ones that are still on no list.
3. publish — one write transaction re-checks every planned row against the database as it is
   now (someone who unsubscribed in the meantime is skipped, not re-activated; an erased address
   is dropped), inserts the last batch of subscribers, and writes the memberships, status
   changes, consent-log entries and filled-in details with a few set-based statements. The
   import appears in the list at once, or not at all.

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
    FILLABLE,
    JOIN,
    LEFT,
    REFUSED,
    SUPPRESSED,
    UNCHANGED,
    WRITES,
    ImportReport,
    Skipped,
    decide,
    fill_details,
)
from newsletter.audience.import_stage import (
    CREATE_TRANSACTIONS,
    SUPPRESSION_SLACK,
    WRITE_BATCH,
    Staging,
    bare,
    delete_created,
    is_dead,
    runs,
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
    reported in `report.problems` and left out. The list changes in one transaction at the end
    (nothing of an import that fails or is interrupted shows); the work before it is done in
    transactions of `batch` rows. `dry_run` changes nothing and reports the same."""
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
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.staged.name}")
                    self.staged.create(conn)
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
                # Closed, not returned to the pool: the staging table and the import's settings
                # go with it (quicker than dropping a table of a million rows).
                conn.invalidate()

    def _write(self) -> None:
        with self.transaction() as conn:
            tally = self._tally(conn)
        new = tally[ADD]
        self.to_write = 2 * new + tally[JOIN] + tally["opted_out"] + tally["confirmed_pending"] \
            + tally["fill"]
        if not self.to_write:
            return  # nothing to write: the plan's reads are the import
        # Each write transaction rewrites the pages of the token_id index it touches, and random
        # tokens touch about one page per row until a batch spans the whole index: so a large
        # import creates its subscribers in at most CREATE_TRANSACTIONS transactions.
        self.create_batch = max(self.batch, -(-new // CREATE_TRANSACTIONS))
        after, remaining = "", new  # every key is > "": the new subscribers in key order
        with self.transaction() as conn:
            last, size = self._next_batch(conn, after, remaining)
        while last is not None:  # the last `batch` rows go in with the publish
            with self.transaction(write=True) as conn:
                self._renew(conn)
                ids = self._create_subscribers(conn, after, last)
                conn.execute(import_subscribers.insert(), [  # cleaned up after a crash
                    {"import_id": self.import_id, "first_id": first, "last_id": last_id}
                    for first, last_id in runs(ids)])
            remaining -= size
            with self.transaction() as conn:
                after, (last, size) = last, self._next_batch(conn, last, remaining)
            self._progress(new - remaining)
        if after:
            with self.transaction() as conn:  # in file order: the staging table is written in order
                self._resolve(conn, "", None)
        self._publish(after)

    def _next_batch(self, conn: Connection, after: str, remaining: int) -> tuple[str | None, int]:
        """(last key, size) of the next batch of new subscribers after `after`, of up to
        `create_batch` rows; (None, 0) when no more than `batch` remain (the publish creates
        those)."""
        if remaining <= self.batch:
            return None, 0
        size = min(self.create_batch, remaining - self.batch)
        s = self.staged
        last = conn.execute(
            sa.select(s.c.email_key).where(s.c.action == ADD, s.c.email_key > after)
            .order_by(s.c.email_key).offset(size - 1).limit(1)).scalar()
        return last, size

    def _renew(self, conn: Connection) -> None:
        """Record this import (with its first batch), or renew its heartbeat."""
        now = utcnow()
        if self.import_id is None:
            self.import_id = conn.execute(imports.insert().values(
                list_id=self.list_id, file=self.file_name[:300], host=socket.gethostname(),
                pid=os.getpid(), started_at=now, heartbeat_at=now)).inserted_primary_key[0]
        else:
            conn.execute(imports.update().where(imports.c.id == self.import_id)
                         .values(heartbeat_at=now))

    def _create_subscribers(self, conn: Connection, after: str, last: str | None) -> list[int]:
        """Insert the staged new subscribers with keys in (after, last] (None: to the end) that
        nobody created meanwhile; their ids."""
        s = self.staged
        where = [s.c.action == ADD, s.c.email_key > after,
                 ~sa.exists().where(subscribers.c.email_key == s.c.email_key)]
        if last is not None:
            where.append(s.c.email_key <= last)
        return list(conn.execute(
            subscribers.insert().from_select(
                ["email", "email_key", "name", "attributes", "token_id"],
                sa.select(s.c.email, s.c.email_key, s.c.name, s.c.attributes, s.c.token_id)
                .where(*where).order_by(s.c.email_key),
            ).returning(subscribers.c.id)
        ).scalars().all())

    def _resolve(self, conn: Connection, after: str, last: str | None) -> None:
        """Note the subscriber ids of the staged new rows with keys in (after, last] ("" and
        None: all). The publish checks that each is the one this import created — the staged
        `token_id` — and plans again a row whose address someone else created, or erased, in
        the meantime (`_drifted`)."""
        s = self.staged
        where = [s.c.action == ADD]
        if after:
            where.append(s.c.email_key > after)
        if last is not None:
            where.append(s.c.email_key <= last)
        conn.execute(s.update().where(*where).values(subscriber_id=(
            sa.select(subscribers.c.id).where(subscribers.c.email_key == s.c.email_key)
            .scalar_subquery())))

    def _publish(self, after: str) -> None:
        """The one transaction that changes the list: the last new subscribers, the plan
        re-checked, then memberships, consent log and details, set-based."""
        s = self.staged
        if self.conn.dialect.name == "sqlite":  # the publish waits for the disk, as every write
            self.conn.connection.driver_connection.execute("PRAGMA synchronous = FULL")
        with self.transaction(write=True) as conn:
            if conn.dialect.name == "postgresql":  # what BEGIN IMMEDIATE is on SQLite, for the re-check
                conn.execute(sa.text("LOCK TABLE subscribers, memberships IN SHARE ROW EXCLUSIVE MODE"))
            self._create_subscribers(conn, after, None)
            self._resolve(conn, after, None)
            changed = self._drifted(conn)
            if changed:
                self._replan(conn, changed)
                # A subscriber this import created whose row no longer adds them (the address was
                # suppressed meanwhile) goes again, unless someone has put them on a list since.
                ours = subscribers.alias("ours")
                conn.execute(subscribers.delete().where(
                    subscribers.c.id.in_(
                        sa.select(s.c.subscriber_id)
                        .join(ours, sa.and_(ours.c.id == s.c.subscriber_id,
                                            ours.c.token_id == s.c.token_id))
                        .where(s.c.action != ADD)),
                    bare(subscribers.c.id)))
            self.report.updated = self._fill_in(conn)
            conn.execute(memberships.insert().from_select(
                ["subscriber_id", "list_id", "status"],
                sa.select(s.c.subscriber_id, sa.literal(self.list_id), s.c.target)
                .where(s.c.action.in_((ADD, JOIN))).order_by(s.c.subscriber_id)))
            targets = conn.execute(sa.select(s.c.target).where(s.c.action == CHANGE).distinct()).scalars()
            for target in list(targets):
                conn.execute(memberships.update().where(
                    memberships.c.list_id == self.list_id,
                    memberships.c.subscriber_id.in_(
                        sa.select(s.c.subscriber_id).where(s.c.action == CHANGE, s.c.target == target)),
                ).values(status=target, updated_at=NOW, requested_name=None))
            consent = ("editor confirmed prior consent" if self.confirmed
                       else "not confirmed: double opt-in pending")
            why = sa.case((s.c.target.in_(sorted(OPTED_OUT)),
                           "status " + s.c.target + " carried over from the file"), else_=consent)
            detail = sa.literal(self.file_name) + " line " + sa.cast(s.c.line, sa.String) + "; " + why
            conn.execute(consent_log.insert().from_select(
                ["subscriber_id", "list_id", "action", "source", "detail"],
                sa.select(s.c.subscriber_id, sa.literal(self.list_id), s.c.target,
                          sa.literal("import"), detail)
                .where(s.c.action.in_(WRITES)).order_by(s.c.subscriber_id)))
            if self.import_id is not None:
                conn.execute(import_subscribers.delete().where(
                    import_subscribers.c.import_id == self.import_id))
                conn.execute(imports.delete().where(imports.c.id == self.import_id))
            # The last progress call comes from inside this transaction, before its commit.
            self._progress(self.to_write)
        self.import_id = None

    def _drifted(self, conn: Connection) -> set[int]:
        """Lines whose plan no longer fits the database: the membership's status is not the one
        planned on, the subscriber is gone or someone else created it, or the address was
        suppressed since the import started."""
        s, m = self.staged, memberships
        query = (
            sa.select(s.c.line)
            .select_from(s.outerjoin(subscribers, subscribers.c.id == s.c.subscriber_id)
                         .outerjoin(m, sa.and_(m.c.subscriber_id == s.c.subscriber_id,
                                               m.c.list_id == self.list_id)))
            .where(s.c.action != SUPPRESSED, sa.or_(
                subscribers.c.id.is_(None),  # erased (or never created)
                subscribers.c.email_key != s.c.email_key,  # … and the id given to someone else
                sa.and_(s.c.action == ADD, subscribers.c.token_id != s.c.token_id),  # not ours
                m.c.status.is_distinct_from(s.c.seen_status))))
        lines = set(conn.execute(query).scalars())
        new_hashes = set(conn.execute(sa.select(suppressions.c.email_hash).where(
            suppressions.c.at >= self.started - SUPPRESSION_SLACK)).scalars())
        if new_hashes:
            after = 0
            while page := conn.execute(
                sa.select(s.c.line, s.c.email_key).where(s.c.line > after, s.c.action != SUPPRESSED)
                .order_by(s.c.line).limit(self.batch)).all():
                lines.update(line for line, key in page if key_hash(key) in new_hashes)
                after = page[-1].line
        return lines

    def _replan(self, conn: Connection, lines: set[int]) -> None:
        """Plan these rows again on what the database holds now (inside the publish)."""
        s = self.staged
        for part in chunked(sorted(lines)):
            rows = conn.execute(sa.select(s).where(s.c.line.in_(part))).all()
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
                conn.execute(s.update().where(s.c.line == row.line).values(**values))

    def _fill_in(self, conn: Connection) -> int:
        """Fill in missing names and attributes of existing subscribers (re-read inside the
        publish, so nothing written meanwhile is overwritten); how many changed."""
        s = self.staged
        changed = 0
        after = 0
        while page := conn.execute(
            sa.select(s.c.line, s.c.subscriber_id, s.c.name, s.c.attributes)
            .where(s.c.fill, s.c.action.in_(FILLABLE), s.c.line > after)
            .order_by(s.c.line).limit(self.batch)).all():
            after = page[-1].line
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

    def _tally(self, conn: Connection) -> dict[str, int]:
        """What the staged plan does, counted in one pass over the staging table."""
        s = self.staged
        conditions = {
            ADD: s.c.action == ADD,
            JOIN: s.c.action == JOIN,
            "opted_out": (s.c.action == CHANGE) & s.c.target.in_(sorted(OPTED_OUT)),
            "confirmed_pending": (s.c.action == CHANGE) & s.c.target.not_in(sorted(OPTED_OUT)),
            UNCHANGED: s.c.action.in_((UNCHANGED, LEFT)),
            "fill": s.c.fill & s.c.action.in_(FILLABLE),
        }
        row = conn.execute(sa.select(*(
            sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0).label(name)
            for name, condition in conditions.items()))).one()
        return dict(row._mapping)

    def _count(self) -> None:
        s, report = self.staged, self.report
        with self.transaction() as conn:
            tally = self._tally(conn)
            report.added, report.joined = tally[ADD], tally[JOIN]
            report.opted_out, report.confirmed_pending = tally["opted_out"], tally["confirmed_pending"]
            report.unchanged = tally[UNCHANGED]
            if self.dry_run:
                report.updated = tally["fill"]
            for line, email, action, seen in conn.execute(
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
            delete_created(self, import_id)

    def _forget_created(self) -> None:
        """After a failure: delete the subscribers this import created (best effort; what is
        left is deleted by the next import)."""
        if self.import_id is None or self.conn.in_transaction():
            return
        with contextlib.suppress(Exception):  # the original error matters; the next import cleans up
            delete_created(self, self.import_id)
