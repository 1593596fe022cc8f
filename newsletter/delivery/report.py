"""What a send run tells its caller: `SendProgress` while it runs, `SendReport` when it ends."""

from __future__ import annotations

from dataclasses import dataclass, field

from newsletter.delivery.lease import WorkerInfo


@dataclass
class SendProgress:
    """Counts so far, handed to `run_send`'s `progress` callback (at most ten times a second)."""

    total: int
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped


@dataclass
class SendReport:
    send_id: int
    issue: str
    list_name: str
    subject: str
    transport: str
    status: str  # this run's end: finished | paused | interrupted, or running (see `others`)
    total: int
    sent: int
    failed_temporary: int
    failed_permanent: int
    bounced: int
    skipped: int
    pending: int
    resumed: bool
    possibly_duplicated: list[str] = field(default_factory=list)
    reason: str | None = None
    seconds: float = 0.0
    run_sent: int = 0  # sent by this run (the counts above are the whole send's)
    joined: list[WorkerInfo] = field(default_factory=list)  # the live runs this one joined
    # The runs still live when this one ended (PostgreSQL): the last of them sets the send's
    # status. With a run that found nothing more to claim, `status` is `running`.
    others: list[WorkerInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = dict(self.__dict__)
        data["joined"] = [w.as_dict() for w in self.joined]
        data["others"] = [w.as_dict() for w in self.others]
        return data
