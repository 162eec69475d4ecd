"""Every exception of the shell, and the one place they map to HTTP statuses and close codes.

    SynclabError             base class
    ├── SettingsError        a bad environment value; the process refuses to start
    ├── SchemaError          the database cannot be used or upgraded by this synclab
    │   ├── SchemaBehind     the database is at an older revision: ``synclab db upgrade``
    │   ├── ServerRunning    ``synclab db`` would change the schema under a server running on it
    │   └── StoppedWaiting   SIGTERM or SIGINT ended a server's wait for its database at its start
    ├── ApiError             a refused HTTP request: ``status``, ``field``, ``message``
    │   ├── BadRequest       400, names the bad field
    │   ├── Unauthorized     401, no token
    │   ├── Forbidden        403, a wrong token or somebody else's data
    │   ├── NotFound         404, an unknown experiment or participant
    │   ├── PayloadTooLarge  413, a request body past ``SYNCLAB_MAX_BODY_BYTES``
    │   └── ActionFailed     500, the game failed on the experimenter's action in some groups
    ├── FrameError           a refused client frame: an ``error`` frame, the socket stays open
    └── NotPersisted         the writer could not commit: the frames of that batch (and of the
        │                    writes queued behind it) get an ``error`` frame; a REST call whose
        │                    write was refused answers 503
        ├── Unstorable       a write the database cannot take (a game's value that is no JSON,
        │                    or one it refuses alone): refused alone, ``game_error``, not to be
        │                    sent again; a REST call's 500
        └── Unavailable      the cluster cannot serve it now (Redis, a group between workers)
            └── NotAuthority this worker no longer acts for the group (its write was fenced)

Pure-core refusals (:class:`groups.RefusedAction`) become ``error`` frames with their own code;
:class:`GameFailed`, one of them, is the shell's: the game failed at the group's authority.
"""

from __future__ import annotations

import logging
from typing import Any

from groups import RefusedAction

# WebSocket close codes (RFC 6455 and the 4000-4999 private range).
WS_1000_NORMAL = 1000
WS_1001_GOING_AWAY = 1001
WS_1008_POLICY_VIOLATION = 1008
WS_1011_INTERNAL_ERROR = 1011
WS_1012_SERVICE_RESTART = 1012  # reconnect: the server restarts, or a worker rejoined its cluster
WS_1013_TRY_AGAIN_LATER = 1013
WS_4000_REPLACED = 4000  # the same participant connected again; this connection is the older one
WS_4003_FORBIDDEN = 4003  # the redwood URL names another game or group than the participant's
WS_4008_TOO_SLOW = 4008  # the connection's send queue overflowed: the client does not read
WS_4029_FLOODING = 4029  # the client kept sending far over its frame rate
WS_4401_UNAUTHENTICATED = 4401  # a monitor sent no token in its first frame (or put one in the URL)
WS_4403_TOKEN_REFUSED = 4403  # a monitor's token is unknown or revoked
WS_4404_UNKNOWN = 4404  # unknown participant code


class SynclabError(Exception):
    """Base class of the shell's exceptions."""


class SettingsError(SynclabError):
    """An environment value is refused."""


class SchemaError(SynclabError):
    """The database cannot be used or upgraded by this synclab (a newer revision, foreign tables)."""


class SchemaBehind(SchemaError):
    """The database is at an older revision than this synclab needs; ``serve`` refuses to start."""


class ServerRunning(SchemaError):
    """``synclab db upgrade`` or ``downgrade`` found a server running on the database; nothing changed."""


class StoppedWaiting(SchemaError):
    """SIGTERM or SIGINT came while a server waited for its database at its start (a ``db``
    command's schema change, another process's lock): it stops there, nothing started."""


class ApiError(SynclabError):
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class PayloadTooLarge(ApiError):
    """A request body larger than the server reads (``server.bodies``); its connection is closed."""

    status = 413


class ActionFailed(ApiError):
    """The experimenter's ``start``, ``pause`` or ``resume`` that the game failed on in some groups
    (a hook raised, or made a write that cannot be stored): each of those is left as it was,
    the failure logged where the game ran; the other groups were acted on. The game's fault,
    not the request's: trying again fails again (``end`` ends a failing game's group without it)."""

    status = 500

    def __init__(self, message: str, *, action: str, done: list[int], failed: list[int]) -> None:
        super().__init__(message)
        self.action = action
        self.done = done
        self.failed = failed

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "action": self.action, "groups": self.done, "failed": self.failed}


class FrameError(SynclabError):
    """A client frame refused before it reached the group."""

    def __init__(self, code: str, message: str, frame_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: the frame's ``id`` when it was read before the refusal (the client drops that frame)
        self.frame_id = frame_id


class NotPersisted(SynclabError):
    """The writer's transaction failed; nothing of the batch was stored or sent.

    Also what a write or a :meth:`~server.storage.Database.write` job queued behind a failed
    batch gets, and what a write gets once the server is shutting down.
    """

    code = "not_persisted"
    #: a REST call refused so: the database failed, not the request; it may be tried again
    status = 503

    def body(self) -> dict[str, Any]:
        return {"error": str(self)}


class Unstorable(NotPersisted):
    """A write holds a value the database cannot take: a game put something that is no JSON in
    its vars, a payload or a decision (a ``set``, an object, bytes, a dict keyed by numbers), or
    the database refused the write alone (a client id its participant stored before; on
    PostgreSQL an integer past its column's range, a text past its column's length).

    Refused alone: the rest of its batch is stored, its group is rolled back to what is stored,
    and the frame that caused it gets an ``error`` frame ``game_error``, which a client does
    not send again (it would fail the same way); one refused for a client id stored before is
    a repeat, acknowledged with the stored ``seq`` (``server.lookups``). ``reason`` names the value."""

    code = "game_error"
    #: a REST call refused so: the game's fault, not the database's; trying again fails again
    status = 500

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class Unavailable(NotPersisted):
    """The cluster cannot serve this now (Redis unreachable, the group's authority gone or moving):
    nothing was stored or sent; the client sends it again (its id makes that safe)."""

    code = "unavailable"


class NotAuthority(Unavailable):
    """This worker no longer acts for the group: another took it over (its lease, its epoch)."""


class GameFailed(RefusedAction):
    """The game failed on an operation at the group's authority (a hook raised on a member's
    frame, on the experimenter's action): nothing of it changed, and the failure was logged
    there, with its traceback, where the game ran. What the asker gets, on that worker or
    another (``server.calls``): a frame's ``error`` ``game_error``, not sent again; an
    experimenter's action that leaves the group as it was. (A stand-in's arrival the game fails
    on is counted all the same, as a human's: ``server.standins``.)"""

    code = "game_error"


#: ``error`` codes of a frame not stored now that may be stored later: the client sends it again
RETRY_CODES = frozenset({NotPersisted.code, Unavailable.code})


def _and_subclasses(*classes: type[BaseException]) -> list[type[BaseException]]:
    found = list(classes)
    for cls in classes:
        found += _and_subclasses(*cls.__subclasses__())
    return found


def _refusals() -> tuple[str, ...]:
    """The refusals an operator mends (a setting, the database's state, each kind of either, those
    defined in other modules too), as a traceback's last line names them."""
    return tuple(f"{cls.__module__}.{cls.__qualname__}: " for cls in _and_subclasses(SettingsError, SchemaError))


def one_line_refusal(record: logging.LogRecord) -> bool:
    """A startup that fails on a refusal (:func:`_refusals`) is logged as its message, not a traceback.

    ``synclab serve`` checks what it can before uvicorn starts (``server.cli._prepare``) and refuses
    there in one line; what changes in between (another process takes the database's lock) is
    found when the lifespan opens the runtime, and Starlette reports a failed startup as the
    traceback's text. A refusal's last line is all the operator needs; any other failure keeps
    its traceback.
    """
    text = record.msg
    if isinstance(text, str) and text.startswith("Traceback") and not record.args:
        last = text.rstrip().rpartition("\n")[2]
        for prefix in _refusals():
            if last.startswith(prefix):
                record.msg = f"synclab: {last[len(prefix):]}"
                break
    return True
