"""The channels the core gives a meaning to, and which of them a game may name as its own.

The core's events go out on :data:`DECISIONS`, :data:`GROUP_DECISIONS`, :data:`STATE` (with
:data:`PERIOD_START` and :data:`PERIOD_END`), :data:`SUBPERIOD`, :data:`RESULT` and
:data:`PERIOD`; :data:`RESERVED_CHANNELS` adds the server's own. :func:`game_channel_problem`
says why a game cannot declare or send on a channel.
"""

from __future__ import annotations

from .faults import GAME_FAULT
from .messages import channel_problem
from .values import shown

DECISIONS = "decisions"
GROUP_DECISIONS = "group_decisions"
STATE = "state"
SUBPERIOD = "subperiod"
RESULT = "result"
PERIOD = "period"
PERIOD_START = "period_start"
PERIOD_END = "period_end"
#: the channels synclab gives a meaning to, which a game may neither send on nor declare: the
#: core's events (above, and ``game_fault``), the server's own records (an experimenter's
#: ``control``, a stand-in's ``standin``, the ``lobby``'s release) and what the server says on a
#: participant's socket (``hello``, ``ack``, ``error``, ``ping``, ``experiment``, ``lobby``). A
#: game's event on one would be stored, replayed and shown as synclab's own: ``state``
#: ``period_end`` as the period's end, ``result`` as a score, ``ack`` as a member's frame stored.
RESERVED_CHANNELS: frozenset[str] = frozenset({
    DECISIONS, GROUP_DECISIONS, STATE, SUBPERIOD, RESULT, PERIOD, GAME_FAULT,
    "control", "standin", "lobby",  # server.control.CONTROL, server.standins.STANDIN, server.presence.LOBBY
    "hello", "ack", "error", "ping", "experiment",  # server.connection, server.course.EXPERIMENT
})


def game_channel_problem(channel: object) -> str | None:
    """Why a game cannot name ``channel`` (in ``channels`` or in ``send``), ``None`` when it can:
    it cannot be stored (:func:`.channel_problem`), or synclab gives it a meaning."""
    problem = channel_problem(channel)
    if problem is None and channel in RESERVED_CHANNELS:
        reserved = "one synclab keeps for its own (groups.RESERVED_CHANNELS)"
        return f"expected a channel of the game's own, got {shown(channel)}, {reserved}"
    return problem
