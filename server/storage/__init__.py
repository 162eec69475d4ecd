"""Storage: the one package that speaks SQL, and the writer that commits the event log.

    tables       the SQLModel tables and the SQLAlchemy tables queries are written against
    times        stored times to epoch seconds, ISO 8601 text and wire milliseconds
    engine       a URL to an engine (SQLite pragmas, JSON), the read-only engine of the commands
    schema       where a database stands against the migrations (Alembic), and upgrading it
    downgrading  back to an earlier revision, in one transaction, refused when values would be lost
    serving      a running server's mark on its database, which keeps ``synclab db``'s changes out
    readers      export's and verify's mark, and the revision checked before they read
    meta         server-wide key-value settings
    tokens       the experimenters' tokens: names, roles, SHA-256 digests (never a token)
    catalog      experiments: creating and listing them, their groups, their status
    seats        who a connecting participant is, and what a live group is built from
    writes       the values a write carries (plain dataclasses, no SQL)
    batch        many writes committed in one transaction, ``seq`` handed out inside it
    periods      what a period's start or end changes in the batch: sessions, block, experiment
    thread       the writer thread that runs batches and jobs in order
    writer       the event loop's side of the writer: callbacks after the commit
    unstorable   a failed batch stored without the writes the database cannot take or refuses
    parts        such a batch's parts, savepoints in one transaction of the writer's connection
    database     the async face: reads on reader threads, writes on the writer thread
    log          reading the event log
    outcomes     sessions, results and ticks
    asof         sessions, groups and blocks as they stood at a ``seq`` (the exports)
    snapshot     the monitor's snapshot of an experiment
    charts       a group's period as the charts draw it (a page opened mid-period)
    statuses     participants' statuses (how each run ended), set in the writer's transaction
    deliveries   scores on their way back to oTree: stored, claimed by one worker, retried
    arrivals     the join link's seats by label, completion codes, the lobby's seats, the way back's rows

Every SQL function is synchronous and runs on a thread, never on the event loop. Code outside
the package imports these names from ``server.storage``, never from the modules inside.
"""

from __future__ import annotations

from .applying import APPLY_EVERY, ApplyFailed, commit_applied
from .applying import COMMIT_EVERY as APPLY_COMMIT_EVERY
from .arrivals import (
    BOT,
    NO_GROUP,
    Arrival,
    Departure,
    Lobby,
    LobbySeat,
    close_lobby,
    completion_code,
    departure,
    ensure_completion_codes,
    label_seat,
    lobby_of,
    missing_completion_codes,
    seat_arrival,
)
from .asof import (
    Period,
    Standing,
    block_status,
    blocks_and_groups_as_of,
    experiment_periods_as_of,
    periods_as_of,
    session_standings,
)
from .batch import apply_numbered, commit_writes
from .catalog import (
    TIMING,
    GroupPlace,
    NewBlock,
    NewExperiment,
    count_experiments,
    experiment_groups,
    experiment_participants,
    experiment_row,
    experiment_timing,
    insert_experiment,
    list_experiments,
    live_group_ids,
    new_code,
    participant_game,
    set_experiment_status,
)
from .charts import period_history
from .database import Database
from .deliveries import (
    Claimed,
    add_otree_deliveries,
    claim_delivery,
    count_deliveries,
    delivery_done,
    delivery_failed,
    due_deliveries,
    finished_without_delivery,
    list_deliveries,
    next_delivery_at,
)
from .downgrading import RELEASES, DataWouldBeLost, Step, downgrade_schema
from .engine import make_engine, normalise_url, sqlite_file
from .epochs import claim_group, group_epoch
from .frameids import ADD_EVERY as CLIENT_IDS_ADD_EVERY
from .groupstates import HeldStates
from .journal import DEFAULT_SIZE as DEFAULT_JOURNAL_SIZE
from .leftover import (
    close_connections_left_open,
    close_connections_of,
    closed_among,
    workers_with_open_connections,
)
from .log import count_events, list_events
from .meta import get_or_create_meta, stored_meta
from .outcomes import (
    block_final_scores,
    bot_held_seats,
    count_rows,
    find_session,
    list_results,
    list_sessions,
    list_ticks,
    merge_session_json,
    results_by_session,
    score_sum,
    session_query,
    session_results,
    session_row,
    stored_score,
)
from .readers import reading_current
from .recovery import LOCK_WAIT, check_startable, reading, recover_file
from .recovery import MARKER as JOURNAL_MARKER
from .recovery import marker as journal_marker
from .schema import (
    BASELINE,
    SchemaState,
    create_schema,
    differences,
    head,
    history,
    prepare_schema,
    schema_state,
    upgrade_schema,
)
from .seats import GroupSpec, Seat, client_ids, client_seq, last_state_query, load_group, load_seat
from .serving import (
    RENEW_EVERY,
    SERVING_LOCK,
    ServingMark,
    hold_serving,
    set_schema_wait,
    wait_for_change,
)
from .snapshot import monitor_state
from .stalls import WRITER_NAME, end_stalled_writers, writer_connection
from .statuses import (
    FINAL_STATUSES,
    STANDIN,
    STATUSES,
    STOOD_IN,
    run_over,
    set_statuses,
)
from .tables import (
    blocks,
    connections,
    deliveries,
    events,
    experiments,
    groups,
    memberships,
    meta,
    participants,
    results,
    sessions,
    ticks,
    tokens,
)
from .thread import COMMIT_BUCKET_NAMES, WriterThread
from .times import iso, to_datetime, to_epoch
from .tokens import (
    ENV_ACCOUNT,
    FIRST_TOKEN,
    ROLES,
    TokenExists,
    add_token,
    check_name,
    check_role,
    digest,
    drop_token,
    first_token,
    list_tokens,
    new_token,
    revoke_token,
    token_account,
    token_used,
)
from .writer import EventWriter
from .writes import ConnectionChange, GroupUpdate, NewEvent, NewResult, NewTick, Write

__all__ = [
    "APPLY_COMMIT_EVERY",
    "APPLY_EVERY",
    "BASELINE",
    "BOT",
    "CLIENT_IDS_ADD_EVERY",
    "COMMIT_BUCKET_NAMES",
    "DEFAULT_JOURNAL_SIZE",
    "ENV_ACCOUNT",
    "FINAL_STATUSES",
    "FIRST_TOKEN",
    "JOURNAL_MARKER",
    "LOCK_WAIT",
    "NO_GROUP",
    "RELEASES",
    "RENEW_EVERY",
    "ROLES",
    "SERVING_LOCK",
    "STANDIN",
    "STATUSES",
    "STOOD_IN",
    "TIMING",
    "WRITER_NAME",
    "ApplyFailed",
    "Arrival",
    "Claimed",
    "ConnectionChange",
    "DataWouldBeLost",
    "Database",
    "Departure",
    "EventWriter",
    "GroupPlace",
    "GroupSpec",
    "GroupUpdate",
    "HeldStates",
    "Lobby",
    "LobbySeat",
    "NewBlock",
    "NewEvent",
    "NewExperiment",
    "NewResult",
    "NewTick",
    "Period",
    "SchemaState",
    "Seat",
    "ServingMark",
    "Standing",
    "Step",
    "TokenExists",
    "Write",
    "WriterThread",
    "add_otree_deliveries",
    "add_token",
    "apply_numbered",
    "block_final_scores",
    "block_status",
    "blocks",
    "blocks_and_groups_as_of",
    "bot_held_seats",
    "check_name",
    "check_role",
    "check_startable",
    "claim_delivery",
    "claim_group",
    "client_ids",
    "client_seq",
    "close_connections_left_open",
    "close_connections_of",
    "close_lobby",
    "closed_among",
    "commit_applied",
    "commit_writes",
    "completion_code",
    "connections",
    "count_deliveries",
    "count_events",
    "count_experiments",
    "count_rows",
    "create_schema",
    "deliveries",
    "delivery_done",
    "delivery_failed",
    "departure",
    "differences",
    "digest",
    "downgrade_schema",
    "drop_token",
    "due_deliveries",
    "end_stalled_writers",
    "ensure_completion_codes",
    "events",
    "experiment_groups",
    "experiment_participants",
    "experiment_periods_as_of",
    "experiment_row",
    "experiment_timing",
    "experiments",
    "find_session",
    "finished_without_delivery",
    "first_token",
    "get_or_create_meta",
    "group_epoch",
    "groups",
    "head",
    "history",
    "hold_serving",
    "insert_experiment",
    "iso",
    "journal_marker",
    "label_seat",
    "last_state_query",
    "list_deliveries",
    "list_events",
    "list_experiments",
    "list_results",
    "list_sessions",
    "list_ticks",
    "list_tokens",
    "live_group_ids",
    "load_group",
    "load_seat",
    "lobby_of",
    "make_engine",
    "memberships",
    "merge_session_json",
    "meta",
    "missing_completion_codes",
    "monitor_state",
    "new_code",
    "new_token",
    "next_delivery_at",
    "normalise_url",
    "participant_game",
    "participants",
    "period_history",
    "periods_as_of",
    "prepare_schema",
    "reading",
    "reading_current",
    "recover_file",
    "results",
    "results_by_session",
    "revoke_token",
    "run_over",
    "schema_state",
    "score_sum",
    "seat_arrival",
    "session_query",
    "session_results",
    "session_row",
    "session_standings",
    "sessions",
    "set_experiment_status",
    "set_schema_wait",
    "set_statuses",
    "sqlite_file",
    "stored_meta",
    "stored_score",
    "ticks",
    "to_datetime",
    "to_epoch",
    "token_account",
    "token_used",
    "tokens",
    "upgrade_schema",
    "wait_for_change",
    "workers_with_open_connections",
    "writer_connection",
]
