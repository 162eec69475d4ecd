"""A game's period played by its own bots, without a server: what a game's tests call.

:func:`rehearse` connects every member at a made-up time, lets each member's bot (the game's
``bot_decision``) decide at random intervals, as ``synclab bots`` paces its bots (``rate``
decisions a second on average, each interval uniform in ``[0.5, 1.5] / rate``), and ticks every
deadline until the period ends. A bot's move goes in through :meth:`~groups.DecisionGroup.receive`
as a participant's frame does, so what would fail in the lab fails here, at once, in the test:

- a move the game refuses raises :class:`InvalidDecision` (with a note naming ``bot_decision``,
  the member and the time): ``synclab bots`` and a stand-in would hold still;
- a ``payoff`` that raises or gives anything but a finite number raises :class:`GameFault`: the
  server would stop that group's clock;
- an overridden ``payoffs`` that is not exactly ``payoff`` for every member raises
  :class:`GameFault`: ``synclab verify`` scores with ``payoff`` and would report a mismatch;
- an event or ``state.vars`` that is no JSON raises :class:`GameFault`: the server cannot store
  it and refuses the action.

Pure like the rest of ``groups/``: the time is made up and the randomness is ``seed``'s.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .channels import DECISIONS, RESULT
from .exceptions import ConfigError, GameFault
from .group import DecisionGroup
from .messages import Event
from .state import Phase, Timing
from .values import shown

#: the made-up time the period starts at (any time does: the core takes it as given)
START = 1_000_000.0
#: the most actions one rehearsal takes: far more than a week's period at 1,000 decisions a second
#: would need only if it were played; a game that never lets its period end stops here
MAX_ACTIONS = 1_000_000
#: what a bot's move is before its ``bot_decision`` returned
_NOTHING = object()


@dataclass(frozen=True)
class Rehearsal:
    """What a rehearsed period left: the group, every event in order, each member's score."""

    group: DecisionGroup
    events: list[Event]
    #: each member's score: the sum of their results' scores (without ``bonus_points``)
    scores: dict[str, float]
    #: the moves the bots made, as ``(time, member, decision)`` (what the game stored)
    moves: list[tuple[float, str, Any]]


def rehearse(
    game: type[DecisionGroup],
    members: Sequence[str] = ("p1", "p2"),
    *,
    period_length: float = 60.0,
    num_subperiods: int | None = None,
    rate_limit: float | None = None,
    config: Mapping[str, Any] | None = None,
    rate: float = 1.0,
    seed: int = 0,
) -> Rehearsal:
    """Play one period of ``game`` with a bot in every seat; see the module's docstring.

    ``config`` is checked as creating an experiment checks it (:meth:`~DecisionGroup.check_config`:
    the schema, then ``validate_config``). Raises what the game raises, with a note saying when.
    """
    if not rate > 0:
        raise ConfigError("rate", f"expected decisions a second above 0, got {shown(rate)}")
    timing = Timing(period_length=period_length, num_subperiods=num_subperiods, rate_limit=rate_limit)
    group = game(list(members), timing=timing, config=game.check_config(config or {}))
    rng = random.Random(seed)
    events: list[Event] = []
    moves: list[tuple[float, str, Any]] = []
    for member in group.members:
        events += _checked(group, group.connect(member, START), f"{member} connected")
    due = {member: START + rng.uniform(0.5, 1.5) / rate for member in group.members}
    for _ in range(MAX_ACTIONS):
        if group.phase is Phase.ENDED:
            return Rehearsal(group, events, _scores(group, events), moves)
        deadline = group.next_deadline()
        member = min(due, key=lambda m: (due[m], group.members.index(m)))
        if deadline is not None and deadline <= due[member]:
            events += _checked(group, group.tick(deadline), f"the tick at {deadline - START:g} s")
            continue
        at, due[member] = due[member], due[member] + rng.uniform(0.5, 1.5) / rate
        when = f"{type(group).__name__}.bot_decision for {member} at {at - START:g} s"
        move: Any = _NOTHING
        try:
            move = group.bot_decision(member, group.group_decisions, rng)
            if move is None:
                continue
            out = group.receive(member, DECISIONS, move, at)
        except Exception as exc:
            exc.add_note(f"rehearse: {when}" + ("" if move is _NOTHING else f", which gave {shown(move)}"))
            raise
        moves.append((at - START, member, group.state.decisions[member]))
        events += _checked(group, out, when)
    raise GameFault(f"rehearse: {type(group).__name__}'s period did not end in {MAX_ACTIONS} actions")


def _checked(group: DecisionGroup, events: list[Event], when: str) -> list[Event]:
    """``events`` once what the server would refuse of them (and of the group) was looked for."""
    for event in events:
        _json(group, event.payload, f"an event on {event.channel!r} ({when})")
    _json(group, group.state.vars, f"the group's vars ({when})")
    if events and group.phase is Phase.RUNNING:
        decisions = group.group_decisions
        together = group.payoffs(decisions)
        each = {p: group.payoff(p, decisions) for p in group.members}
        if together != each:
            raise GameFault(
                f"{type(group).__name__}.payoffs gave {shown(together)} where payoff gives {shown(each)} "
                f"for {shown(decisions)} ({when}): synclab verify scores with payoff",
                "payoffs",
            )
    return events


def _json(group: DecisionGroup, value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise GameFault(f"{type(group).__name__}: {what} is no JSON, the server could not store it: {exc}") from exc


def _scores(group: DecisionGroup, events: list[Event]) -> dict[str, float]:
    scores = dict.fromkeys(group.members, 0.0)
    for event in events:
        if event.channel == RESULT and event.to:
            scores[next(iter(event.to))] += event.payload["score"]
    return scores
