"""The tables: one per word of the contract (experiment, block, participant, group, connection,
event, session, result) plus group membership, subperiod ticks, the experimenters' ``tokens``
and a key-value ``meta`` table.

The SQLModel classes declare them; the module-level names (``experiments``, ``events``, …) are
the SQLAlchemy tables every query of the package is written against. Times are UTC. Rows are
written through this package, never with an ORM session on the event loop. A change here needs a
migration (:mod:`.migrations`); a test compares the two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from groups import MAX_CHANNEL_LENGTH

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere event ids are 64-bit.
_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
#: the condition of the partial index of ``state`` events: a literal, so a query that repeats it
#: word for word (not as a bound parameter) can use the index
STATE_ONLY = "channel = 'state'"
#: a stand-in's comings and goings (``ix_events_standin``): who held a seat at a period's end
STANDIN_ONLY = "channel = 'standin'"
#: the connections not closed yet (``ix_connections_open``)
STILL_OPEN = "disconnected_at IS NULL"


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _time(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index))


class Meta(SQLModel, table=True):
    """Server-wide values (the generated experimenter token was kept here in clear before 0005_tokens)."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str


class Token(SQLModel, table=True):
    """An experimenter's token: a name, a role (``admin`` or ``watch``), and the SHA-256 of the token, never the token."""

    __tablename__ = "tokens"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=64)
    role: str = Field(max_length=16)
    #: hex SHA-256 of the token (a random 192-bit string: a stolen digest does not give it back)
    digest: str = Field(unique=True, max_length=64)
    created_at: datetime = _time(nullable=False)
    last_used_at: datetime | None = _time()
    revoked_at: datetime | None = _time()


class Experiment(SQLModel, table=True):
    __tablename__ = "experiments"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, max_length=64)
    game: str = Field(max_length=200)
    status: str = Field(default="pending", max_length=16)
    config: dict[str, Any] | None = _json()
    num_participants: int
    group_size: int
    num_blocks: int
    #: seconds between the end of a group's period and its members' next block
    block_pause: float = 5.0
    created_at: datetime = _time(nullable=False)
    started_at: datetime | None = _time()
    finished_at: datetime | None = _time()
    #: the last ``seq`` handed out; advanced inside the writer's transaction, so gap-free
    last_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    #: how people arrive and leave (``server.online``): the shared join link's label parameter,
    #: the lobby's timeout and fill, the dropout delay, the completion URL, oTree's URL and REST
    #: key (kept server-side); ``None``: pre-made links only, as before
    online: dict[str, Any] | None = _json()


class Block(SQLModel, table=True):
    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("experiment_id", "index"),)
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    index: int
    period_length: float | None = None
    num_subperiods: int | None = None
    rate_limit: float | None = None
    bonus_points: float = 0.0
    matching: str = Field(default="fixed", max_length=16)
    status: str = Field(default="pending", max_length=16)


class Participant(SQLModel, table=True):
    __tablename__ = "participants"
    #: one seat per label and experiment, across workers: a constraint, not luck
    __table_args__ = (
        UniqueConstraint("experiment_id", "join_label", name="uq_participants_join_label"),
        Index("ix_participants_completion_code", "completion_code", unique=True),
    )
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    code: str = Field(unique=True, max_length=64)
    label: str = Field(max_length=64)
    index: int
    #: the label the participant arrived with through the shared join link (``?label=``, or the
    #: experiment's own parameter such as ``PROLIFIC_PID``); ``None``: the seat is not taken that way
    join_label: str | None = Field(default=None, max_length=200)
    joined_at: datetime | None = _time()
    #: the code the participant takes back to the recruiting platform; unique over all experiments
    completion_code: str | None = Field(default=None, max_length=32)
    #: how the participant's run ended: ``finished``, ``cancelled`` (ended by the experimenter
    #: before they played every block), ``dropped``, ``replaced`` (a bot played for them), ``bot``
    #: (a seat a bot filled), ``no_group`` (released from the lobby); ``None`` while it has not
    #: (:mod:`.statuses`)
    status: str | None = Field(default=None, max_length=16)


class Group(SQLModel, table=True):
    """The participants who play one block together, and the group's persisted state."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("block_id", "index"),)
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    block_id: int = Field(foreign_key="blocks.id", index=True)
    index: int
    phase: str = Field(default="waiting", max_length=16)
    started_at: datetime | None = _time()
    ends_at: datetime | None = _time()
    ended_at: datetime | None = _time()
    subperiod: int = 0
    decisions: dict[str, Any] | None = _json()
    vars: dict[str, Any] | None = _json()
    #: the rest of the core's clock: pauses, the flow integral, the rate limit (``GroupState.clock``)
    clock: dict[str, Any] | None = _json()
    last_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    #: the fencing epoch of the group's authority (``server.cluster.leases``): raised by each new
    #: authority before it loads the group, checked in the transaction of every write of the group
    epoch: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0, server_default="0"))


class Membership(SQLModel, table=True):
    """A participant's place in a group, in member order (the first member is row in bimatrix)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("group_id", "position"), UniqueConstraint("participant_id", "block_id"))
    id: int | None = Field(default=None, primary_key=True)
    group_id: int = Field(foreign_key="groups.id", index=True)
    participant_id: int = Field(foreign_key="participants.id", index=True)
    block_id: int = Field(foreign_key="blocks.id")
    position: int


class Connection(SQLModel, table=True):
    """One WebSocket's lifetime."""

    __tablename__ = "connections"
    __table_args__ = (
        # the connections still open, by the worker that holds them: what a cluster's worker
        # closes when another worker is gone (server.cluster.heartbeats)
        Index("ix_connections_open", "worker", sqlite_where=text(STILL_OPEN), postgresql_where=text(STILL_OPEN)),
    )
    id: str = Field(primary_key=True, max_length=36)
    participant_id: int = Field(foreign_key="participants.id", index=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    connected_at: datetime = _time(nullable=False)
    disconnected_at: datetime | None = _time()
    user_agent: str | None = Field(default=None, max_length=512)
    address: str | None = Field(default=None, max_length=64)
    route: str = Field(default="synclab", max_length=16)
    close_code: int | None = None
    #: the cluster's worker that held the socket (``None`` in one process)
    worker: str | None = Field(default=None, max_length=200)


class Event(SQLModel, table=True):
    """One message in or out, persisted before anyone sees it."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("experiment_id", "seq"),
        # A client's ids are kept once each by the table ``client_ids``, not by an index of this
        # table (0016_client_ids): see :class:`ClientId`.
        # A group's last ``state`` event (seats.load_group) is all that is looked up
        # by group: indexing every event by group cost each commit a page per group in the batch.
        Index(
            "ix_events_group_state",
            "group_id",
            "seq",
            sqlite_where=text(STATE_ONLY),
            postgresql_where=text(STATE_ONLY),
        ),
        # A group's stand-in events (server.storage.outcomes.bot_held_seats: whose seat a bot held at
        # a period's end, for the ranks and `finished`), a few a group: else every event of the
        # experiment is read to find them.
        Index(
            "ix_events_standin",
            "group_id",
            "seq",
            sqlite_where=text(STANDIN_ONLY),
            postgresql_where=text(STANDIN_ONLY),
        ),
    )
    id: int | None = Field(default=None, sa_column=Column(_BIG_ID, primary_key=True, autoincrement=True))
    experiment_id: int = Field(foreign_key="experiments.id")
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    timestamp: datetime = _time(nullable=False)
    group_id: int | None = Field(default=None, foreign_key="groups.id")
    participant_id: int | None = Field(default=None, foreign_key="participants.id")
    channel: str = Field(max_length=MAX_CHANNEL_LENGTH)  # the core refuses a longer one (DecisionGroup.send)
    value: Any = _json()
    client_id: str | None = Field(default=None, max_length=64)
    #: made by a server-side bot (a lobby's fill, a dropout's stand-in), not by the participant
    bot: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="0"))
    #: the one participant the server sent it to alone (a result, a game's ``send(…, to=[member])``);
    #: ``None`` for an event sent to the group, to several members, to nobody, or by a participant
    recipient_id: int | None = Field(default=None, foreign_key="participants.id")


class ClientId(SQLModel, table=True):
    """A client frame's id, once per participant, and the ``seq`` its event was stored under.

    The wire's promise: a repeated ``"id"`` is stored once and answered with the first ``seq``.
    ``events.client_id`` keeps each event's id for the log; this table is what holds them
    unique and answers the look-ups. Its rows are written with the event's, in the same
    transaction, except by the journal's apply on SQLite, which adds them in bulk, sorted,
    every few seconds (:mod:`.clientids`): an index of ``events`` keyed by participant had each
    commit write one of its pages for every participant who sent, the larger part of what a
    commit wrote once a session ran for a while (bench/README.md, "The client ids apart").
    Without a row id on SQLite: the key is the row.
    """

    __tablename__ = "client_ids"
    __table_args__ = {"sqlite_with_rowid": False}
    participant_id: int = Field(foreign_key="participants.id", primary_key=True, sa_column_kwargs={"autoincrement": False})
    client_id: str = Field(primary_key=True, max_length=64)
    experiment_id: int = Field(foreign_key="experiments.id")
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class Session(SQLModel, table=True):
    """One participant in one block (after MUSCLE's Session)."""

    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("participant_id", "block_id"),)
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    participant_id: int = Field(foreign_key="participants.id", index=True)
    block_id: int = Field(foreign_key="blocks.id", index=True)
    group_id: int = Field(foreign_key="groups.id")
    started_at: datetime | None = _time()
    finished_at: datetime | None = _time()
    json_data: dict[str, Any] | None = _json()
    #: bonus + Σ its results once its period ended; NULL when that is past a float's range (no finite number)
    final_score: float | None = 0.0


class Result(SQLModel, table=True):
    """One scored outcome of a session: one per subperiod, or one per continuous period."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("session_id", "subperiod"),
        # whose result each ``result`` event on a page of the event log reported (server.storage.log)
        Index("ix_results_experiment_id_seq", "experiment_id", "seq"),
    )
    id: int | None = Field(default=None, primary_key=True)
    session_id: int = Field(foreign_key="sessions.id", index=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    #: the ``result`` event that reported it to the participant
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    subperiod: int | None = None
    decision: Any = _json()
    score: float = 0.0


class Tick(SQLModel, table=True):
    """A timed tick of a group: when it was due and when it ran, with the decisions snapshot."""

    __tablename__ = "ticks"
    __table_args__ = (
        UniqueConstraint("group_id", "kind", "index"),
        # The export reads an experiment's ticks in the order they were stored, a page at a time
        # (server.exportlogs.ticks): a range of this index, none of another experiment's ticks.
        Index("ix_ticks_experiment_id_id", "experiment_id", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    #: the group's experiment (as ``groups.experiment_id``), kept here so the export pages on it
    experiment_id: int = Field(foreign_key="experiments.id")
    group_id: int = Field(foreign_key="groups.id", index=True)
    kind: str = Field(max_length=16)
    index: int
    scheduled_at: datetime = _time(nullable=False)
    actual_at: datetime = _time(nullable=False)
    #: ran more than ``groups.LATE_AFTER`` after it was due (e.g. applied after a restart)
    late: bool = False
    snapshot: dict[str, Any] | None = _json()


class Delivery(SQLModel, table=True):
    """A participant's score on its way back to where they came from (oTree's REST API), retried until it lands."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("participant_id", "kind"),)
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    participant_id: int = Field(foreign_key="participants.id", index=True)
    #: what is delivered: ``otree`` (``POST {otree_url}/api/participant_vars/{label}``)
    kind: str = Field(max_length=16)
    #: unbounded: the label is percent-encoded, up to 12 characters for each of its 200 (``MAX_LABEL``)
    url: str = Field(sa_column=Column(Text, nullable=False))
    payload: dict[str, Any] | None = _json()
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = _time(nullable=False)
    #: when the next attempt is due; ``None`` once delivered
    next_at: datetime | None = _time()
    delivered_at: datetime | None = _time()
    #: when it was refused, never to be posted (``last_error`` says why: a score that is no finite number)
    refused_at: datetime | None = _time()


#: every table of synclab (what the migrations build, what ``synclab db check`` compares with)
metadata = SQLModel.metadata
_tables = metadata.tables
experiments = _tables[Experiment.__tablename__]
blocks = _tables[Block.__tablename__]
participants = _tables[Participant.__tablename__]
groups = _tables[Group.__tablename__]
memberships = _tables[Membership.__tablename__]
connections = _tables[Connection.__tablename__]
events = _tables[Event.__tablename__]
client_ids = _tables[ClientId.__tablename__]
meta = _tables[Meta.__tablename__]
sessions = _tables[Session.__tablename__]
results = _tables[Result.__tablename__]
ticks = _tables[Tick.__tablename__]
deliveries = _tables[Delivery.__tablename__]
tokens = _tables[Token.__tablename__]
