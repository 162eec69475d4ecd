"""The futures a live group's actions return: what a member's frame is answered with, one future
that follows another, one nobody awaits, a refusal nobody may await.

An action's future settles at its write's commit (:meth:`server.live.LiveGroup.act`), with its
events' ``seq``s, or a member's frame's own alone (:func:`own_event`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from groups import Event


def follow(inner: asyncio.Future[list[int]], outer: asyncio.Future[list[int]]) -> None:
    """``outer`` settles as ``inner`` does (at once if it has)."""

    def copy(done: asyncio.Future[list[int]]) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
        elif (exc := done.exception()) is not None:
            refuse(outer, exc)
        else:
            outer.set_result(done.result())

    if inner.done():
        copy(inner)
    else:
        inner.add_done_callback(copy)


def refuse(future: asyncio.Future[Any], exc: BaseException) -> None:
    """``future`` fails with ``exc``, unless it is settled already (its awaiter was cancelled, and
    cancelled it), marked as seen: a refusal nobody awaits (a held frame whose connection closed,
    one sent without awaiting its answer) is an answer, not an error for asyncio to log ("Future
    exception was never retrieved") when the future is dropped. Whoever awaits it still gets it."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


def consume(future: asyncio.Future[Any]) -> None:
    """Mark a fire-and-forget action's failure as seen (the writer has logged it)."""
    if not future.cancelled():
        future.exception()


def own_event(events: list[Event]) -> int:
    """The index of the one event a member's own frame made (the core stamps only it with the member).

    A loop, not ``next()`` over a generator: a generator left unfinished is closed when it is
    dropped, by an exception thrown into it, which cost a tenth of a decision's work here."""
    for i, ev in enumerate(events):
        if ev.participant is not None:
            return i
    raise ValueError("no event of the member's own frame")
