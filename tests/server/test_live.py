"""A live group's answers to a frame, against a clock the test moves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from groups import Bimatrix, InvalidDecision, RefusedAction
from server import clientids
from server.exceptions import NotAuthority, NotPersisted
from server.hub import MemoryHub
from server.routing import LiveGroups
from server.storage import (
    Database,
    EventWriter,
    NewBlock,
    NewExperiment,
    create_schema,
    insert_experiment,
    new_code,
)
from server.storage import events as events_table
from server.storage import groups as groups_table
from server.ticks import to_microseconds
from server.wire import encode, event_frame


class FailsOnNine(Bimatrix):
    """bimatrix whose check of a decision raises on 0.9 (found by its import path)."""

    def validate_decision(self, participant: str, decision: Any) -> Any:
        if decision == 0.9:
            raise RuntimeError("broken on 0.9")
        return super().validate_decision(participant, decision)


@dataclass
class Pair:
    """A live group of two members, both connected, on a real writer and SQLite database."""

    db: Database
    live: LiveGroups
    group: Any
    codes: list[str]
    experiment_id: int


@contextlib.asynccontextmanager
async def live_pair(
    tmp_path: Path, block: NewBlock, game: str = "bimatrix", clock: Callable[[], float] | None = None
) -> AsyncIterator[Pair]:
    """:class:`Pair` of ``game`` in one ``block`` (its groups ``[[0, 1]]``); everything closed after."""
    db = Database(f"sqlite:///{tmp_path}/live.db")
    writer = EventWriter(db)
    try:
        await db.write(create_schema)
        codes = [new_code(), new_code()]
        experiment_id = await db.write(insert_experiment, NewExperiment(new_code(), game, {}, 2, codes, [block], 1e9))
        group_id = await db.read(
            lambda engine: engine.connect().execute(
                select(groups_table.c.id).where(groups_table.c.experiment_id == experiment_id)
            ).scalar_one()
        )
        writer.start()
        live = LiveGroups(db, writer, MemoryHub()) if clock is None else LiveGroups(db, writer, MemoryHub(), clock=clock)
        group = await live.group(group_id)
        for code in codes:
            await group.connect(code, None, worker="", conn=code)
        try:
            yield Pair(db, live, group, codes, experiment_id)
        finally:
            live.close()
    finally:
        await writer.close()
        db.close()


async def test_an_ack_names_the_decisions_own_seq_when_overdue_ticks_are_stored_before_it(tmp_path: Path) -> None:
    """Two subperiod ticks fell due before a decision came (the clock moved, no timer ran): the
    write stores the ticks first, and the decision's future names its own event's seq, which is
    what its ack and a repeated id must say (CI's PostgreSQL-restart test caught the first seq of
    the write, a tick's, in an ack)."""
    now = [1_000_000.0]
    async with live_pair(tmp_path, NewBlock(0, 10.0, 5, None, 0.0, "fixed", [[0, 1]]), clock=lambda: now[0]) as pair:
        group, codes = pair.group, pair.codes
        now[0] += 4.5  # the ticks at 2 and 4 s are due; the loop's timers are seconds away
        first = await group.receive(codes[0], "decisions", 0.7, "mine")
        again = await group.receive(codes[0], "decisions", 0.7, "mine")
        rows = await pair.db.read(lambda engine: engine.connect().execute(
            select(events_table.c.seq, events_table.c.channel, events_table.c.client_id)
            .where(events_table.c.experiment_id == pair.experiment_id).order_by(events_table.c.seq)
        ).all())
    own = [seq for seq, _channel, client_id in rows if client_id == "mine"]
    ticks = [seq for seq, channel, _ in rows if channel == "subperiod"]
    assert len(ticks) == 2 and own and own[0] > max(ticks)
    assert first == again == own


@given(st.floats(min_value=1e9, max_value=4e9, allow_nan=False, allow_infinity=False))
def test_a_group_clock_reading_is_a_whole_microsecond_that_a_stored_time_gives_back(epoch: float) -> None:
    """What the group's clock reads is what a restart reads back from the database."""
    value = to_microseconds(epoch)
    assert abs(value - epoch) <= 0.5e-6 + 2 * math.ulp(epoch)  # a double near 2e9 has steps of 0.24 µs
    assert to_microseconds(value) == value
    stored = datetime.fromtimestamp(value, UTC)
    assert stored.timestamp() == value
    assert stored == datetime.fromtimestamp(round(value, 6), UTC)


async def test_a_groups_clock_reads_what_to_microseconds_makes_of_its_clock(tmp_path: Path) -> None:
    """A group's clock writes :func:`to_microseconds` out (a call less per decision): the same readings."""
    now = [1_000_000.0]
    async with live_pair(tmp_path, NewBlock(0, 10.0, 5, None, 0.0, "fixed", [[0, 1]]), clock=lambda: now[0]) as pair:
        for epoch in (1_764_950_400.1234565, 1_764_950_400.9999995, 2e9 + 1 / 3, 3_999_999_999.0000005, 1e9):
            now[0] = epoch
            assert pair.group._clock() == to_microseconds(epoch)


@given(
    st.sampled_from(["group_decisions", "state", "result", "chat"]),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.text(),
              st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False), max_size=4)),
    st.integers(min_value=1, max_value=2**53),
    st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False),
)
def test_a_stored_events_frame_is_the_text_encode_makes(channel: str, payload: Any, seq: int, ts: float) -> None:
    """The commit's frame of an event (:func:`server.wire.event_frame`) is :func:`server.wire.encode`'s, byte for byte."""
    assert event_frame(channel, payload, seq, ts) == encode(channel, payload, seq=seq, ts=ts)


async def test_what_fell_due_before_a_tick_the_game_fails_on_is_stored_once_not_retried_in_a_loop(
    tmp_path: Path,
) -> None:
    """A rate-limited broadcast and a subperiod fell due before a decision came; the game fails on
    the subperiod (a 7 breaks Fragile's payoff). The decision is refused with the game's own error
    and the broadcast, applied before the failure, is stored. The carried events were stored by
    applying what was due again, which failed again, and so on until a RecursionError."""
    now = [1_000_000.0]
    block = NewBlock(0, 10.0, 5, 1.0, 0.0, "fixed", [[0, 1]])
    async with live_pair(tmp_path, block, "tests.server.test_blocks:Fragile", clock=lambda: now[0]) as pair:
        group, codes = pair.group, pair.codes
        now[0] += 0.1
        await group.receive(codes[0], "decisions", 1, "one")  # broadcast at once
        now[0] += 0.1
        await group.receive(codes[0], "decisions", 7, "seven")  # its broadcast waits for the rate limit
        now[0] += 2.3  # the broadcast (at 1.1 s) and subperiod 0 (at 2 s) are due; no timer ran
        with pytest.raises(ZeroDivisionError, match="seven"):
            group.receive(codes[1], "decisions", 3, "three")
        await asyncio.sleep(0.2)  # the carried broadcast's write
        rows = await pair.db.read(lambda engine: engine.connect().execute(
            select(events_table.c.channel, events_table.c.value)
            .where(events_table.c.experiment_id == pair.experiment_id).order_by(events_table.c.seq)
        ).all())
    broadcasts = [value for channel, value in rows if channel == "group_decisions"]
    assert broadcasts[-1] == {codes[0]: 7, codes[1]: 0}
    assert [value for channel, value in rows if channel == "decisions"] == [1, 7]
    assert "subperiod" not in [channel for channel, _ in rows]


async def test_a_decision_whose_awaiter_was_cancelled_is_settled_all_the_same(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Whoever awaits a decision's future (a stand-in's task stopped when its human comes back,
    a shutdown) may be cancelled before the commit: the commit's callback still runs to its end,
    so the client id is known with its seq (a repeat is answered, not stored again) and the
    monitors and the run's end hear of it. The callback failed on setting the cancelled future's
    result, and skipped the rest."""
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, codes = pair.group, pair.codes
        first = group.receive(codes[0], "decisions", 0.7, "mine")
        first.cancel()
        for _ in range(200):  # until its write is stored (bounded: 2 s)
            stored = await pair.db.read(lambda engine: engine.connect().execute(
                select(events_table.c.seq).where(events_table.c.client_id == "mine")
            ).scalars().all())
            if stored:
                break
            await asyncio.sleep(0.01)
        again = await asyncio.wait_for(group.receive(codes[0], "decisions", 0.7, "mine"), 2)
    assert again == stored and len(stored) == 1
    assert not [r for r in caplog.records if "callback failed" in r.getMessage()]


async def filtered(group: Any, code: str) -> list[int]:
    """``code``'s frame ``c0`` stored, then five more, so that ``c0`` goes to the filter (``KEPT``
    set to 2): a repeat of it is looked up in the database. The first frame's answer."""
    first: list[int] = await group.receive(code, "decisions", 0.1, "c0")
    for i in range(1, 6):
        await group.receive(code, "decisions", 0.1 * i, f"c{i}")
    return first


async def test_a_look_up_whose_awaiter_was_cancelled_ends_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeat of an old id is looked up in the database, and whoever awaits its answer is
    cancelled meanwhile (a remote request's task at a shutdown, say): the look-up ends without an
    error, the id known with its stored seq, and the frame held behind it is received. Setting the
    cancelled future's result raised InvalidStateError in the look-up's task."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, code = pair.group, pair.codes[0]
        first = await filtered(group, code)
        assert group.client_ids[code].get("c0") is clientids.MAYBE
        repeat = group.receive(code, "decisions", 0.1, "c0")
        later = group.receive(code, "decisions", 0.9, "c6")  # held behind the look-up
        looking = list(group._looking)
        assert len(looking) == 1
        repeat.cancel()
        assert not [r for r in await asyncio.gather(*looking, return_exceptions=True) if isinstance(r, BaseException)]
        assert group.client_ids[code].get("c0") == first[0]
        assert len(await asyncio.wait_for(later, 2)) == 1


async def test_a_frame_refused_behind_a_look_up_leaves_the_frames_after_it_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page sends again an old frame (looked up in the database) and then new ones, which wait
    behind the look-up: one the game refuses is answered with its refusal, and the one after it is
    received and stored. The refusal was raised in the look-up's task: it skipped the frames after
    it, whose answers never came."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, code = pair.group, pair.codes[0]
        first = await filtered(group, code)
        repeat = group.receive(code, "decisions", 0.1, "c0")
        refused = group.receive(code, "decisions", "no number", "c6")  # both held behind the look-up
        later = group.receive(code, "decisions", 0.9, "c7")
        looking = list(group._looking)
        assert await asyncio.wait_for(repeat, 2) == first
        assert not [r for r in await asyncio.gather(*looking, return_exceptions=True) if isinstance(r, BaseException)]
        with pytest.raises(InvalidDecision):
            await asyncio.wait_for(refused, 2)
        assert len(await asyncio.wait_for(later, 2)) == 1


async def test_a_frame_the_game_fails_on_behind_a_look_up_is_answered_game_error_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame held behind a look-up of an old client id, on which the game's check raises, is
    answered and logged as such a frame is when nothing holds it (``server.connection``): refused
    with ``game_error``, the game's failure logged with its traceback, in the same line. It was answered with the game's
    own exception, which the connection sends as ``internal``, and logged nowhere."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    game = "tests.server.test_live:FailsOnNine"
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]]), game) as pair:
        group, code = pair.group, pair.codes[0]
        first = await filtered(group, code)
        repeat = group.receive(code, "decisions", 0.1, "c0")
        failing = group.receive(code, "decisions", 0.9, "c6")  # held behind the look-up
        later = group.receive(code, "decisions", 0.8, "c7")
        assert await asyncio.wait_for(repeat, 2) == first
        with pytest.raises(RefusedAction) as refused:
            await asyncio.wait_for(failing, 2)
        assert refused.value.code == "game_error", refused.value
        assert refused.value.message == "the game failed on this frame: RuntimeError"
        assert len(await asyncio.wait_for(later, 2)) == 1
    failures = [r for r in caplog.records if "broken on 0.9" in r.getMessage() or (
        r.exc_info is not None and "broken on 0.9" in str(r.exc_info[1]))]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is RuntimeError
    # the line of a frame the game fails on when nothing holds it (server.hooks.frame_failed): one
    # line to look for in a log whether the frame waited or not (a cluster's test counts it)
    assert failures[0].getMessage() == f"group {group.id}: the game {game} failed on a frame of {code}"


async def test_a_members_frames_wait_for_their_stored_ids_read_at_the_first_frame(tmp_path: Path) -> None:
    """A group loaded without its members' ids (as a cluster's worker takes it, nobody seated
    there yet) reads a member's stored ids at their first frame; the frames sent meanwhile wait
    behind the read, in order: a repeat of a frame stored before is answered with its seq, a new
    frame after it is stored. When the read fails (here the events table is gone), a frame with
    an id is refused with ``NotPersisted``, to be sent again, not taken as new."""
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        code = pair.codes[0]
        first = await pair.group.receive(code, "decisions", 0.1, "c0")
        pair.live.retire(pair.group.id)
        group = await pair.live.group(pair.group.id)
        assert code not in group.client_ids
        repeat = group.receive(code, "decisions", 0.1, "c0")
        new = group.receive(code, "decisions", 0.9, "c1")
        assert code in group._held and not repeat.done() and not new.done()
        assert await asyncio.wait_for(repeat, 2) == first
        assert (await asyncio.wait_for(new, 2))[0] > first[0]
        assert group.client_ids[code].get("c0") == first[0]

        pair.live.retire(group.id)
        group = await pair.live.group(group.id)
        await pair.db.write(_events_gone)
        with pytest.raises(NotPersisted, match="could not be checked"):
            await asyncio.wait_for(group.receive(code, "decisions", 0.1, "c0"), 2)
        assert code not in group.client_ids and not group._held


def _events_gone(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events RENAME TO events_gone")


async def _reloaded(pair: Pair) -> tuple[Any, list[int]]:
    """``pair``'s first member's frame ``c0`` stored, then the group loaded again without the
    members' ids (as a cluster's worker takes it): the group, and ``c0``'s answer."""
    first = await pair.group.receive(pair.codes[0], "decisions", 0.1, "c0")
    pair.live.retire(pair.group.id)
    group = await pair.live.group(pair.group.id)
    assert pair.codes[0] not in group.client_ids
    return group, first


@pytest.mark.parametrize("started", [False, True], ids=["before-it-ran", "while-it-reads"])
async def test_frames_held_behind_a_read_that_is_cancelled_are_answered_and_the_member_no_longer_held(
    tmp_path: Path, started: bool
) -> None:
    """A member's frames wait behind the read of their stored ids, and the read's task is
    cancelled (as the loop's end cancels every task): a frame with an id is refused with
    ``NotPersisted``, to be sent again, one without an id (a stand-in's) is received, and the
    member is no longer held (a frame sent again starts a new read). Cancelled before it first
    ran, the task never entered its ``try``: its ``finally`` never ran, the frames waited for
    good, and every later frame of the member behind them."""
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, first = await _reloaded(pair)
        code = pair.codes[0]
        repeat = group.receive(code, "decisions", 0.1, "c0")
        bot = group.receive(code, "decisions", 0.5, None, bot=True)
        new = group.receive(code, "decisions", 0.9, "c1")
        [read] = group._looking
        if started:
            await asyncio.sleep(0)  # the read is on the database's thread
        read.cancel()
        for held in (repeat, new):
            with pytest.raises(NotPersisted, match="server is stopping"):
                await asyncio.wait_for(held, 2)
        assert await asyncio.wait_for(bot, 2)  # received and stored (its write's seqs)
        assert not group._held and not group._looking and code not in group.client_ids
        assert await asyncio.wait_for(group.receive(code, "decisions", 0.1, "c0"), 2) == first


async def test_a_group_retired_while_it_reads_a_members_ids_answers_their_held_frames_at_once(tmp_path: Path) -> None:
    """A group is retired (in a cluster, its lease lost; in one process, dropped as finished)
    while a member's frame waits behind the read of their stored ids: the read stops, and the
    frame is refused with ``NotAuthority`` (the client sends it again, to whoever serves the group
    now) and the member no longer held. The read went on, the ids were loaded into the retired
    group, and only then was the frame refused."""
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, _ = await _reloaded(pair)
        code = pair.codes[0]
        repeat = group.receive(code, "decisions", 0.1, "c0")
        [read] = group._looking
        pair.live.retire(group.id)
        with pytest.raises(NotAuthority):
            await asyncio.wait_for(repeat, 2)
        assert read.cancelled() and not group._held and not group._looking and code not in group.client_ids


@pytest.mark.parametrize("how", ["before-it-ran", "while-it-reads", "group-retired"])
async def test_a_look_up_that_is_cancelled_answers_its_frame_and_the_frames_held_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A repeat of an old id is looked up in the database, a later frame held behind it, and the
    look-up's task is cancelled (before it ran, or while it reads, as the loop's end does; or by
    the group's retire): the repeat is refused with ``NotPersisted``, to be sent again (answered
    then with its seq), and the frame behind it received. The repeat's answer never came; and
    cancelled before it ran, the frames behind it waited for good too."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, code = pair.group, pair.codes[0]
        first = await filtered(group, code)
        repeat = group.receive(code, "decisions", 0.1, "c0")
        later = group.receive(code, "decisions", 0.9, "c6")  # held behind the look-up
        [look] = group._looking
        if how == "while-it-reads":
            await asyncio.sleep(0)
        if how == "group-retired":
            pair.live.retire(group.id)
            for held in (repeat, later):  # (what is received after it too: the group is retired)
                with pytest.raises(NotAuthority):
                    await asyncio.wait_for(held, 2)
            assert look.cancelled() and not group._held
            return
        look.cancel()
        with pytest.raises(NotPersisted, match="server is stopping"):
            await asyncio.wait_for(repeat, 2)
        assert len(await asyncio.wait_for(later, 2)) == 1
        assert not group._held and not group._looking
        assert await asyncio.wait_for(group.receive(code, "decisions", 0.1, "c0"), 2) == first


async def test_a_look_up_of_a_refused_write_that_is_cancelled_refuses_its_frame_to_be_sent_again(tmp_path: Path) -> None:
    """A member's ids here miss a frame stored before (read before it was stored): its repeat's
    write is refused by the database's unique index and looked up, and the look-up's task is
    cancelled (the loop's end, the group's retire): the frame is refused with ``NotPersisted``,
    not as unstorable, and its id forgotten, so that sent again it is answered with its stored
    seq. Its answer never came."""
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, first = await _reloaded(pair)
        code = pair.codes[0]
        group.load_client_ids(code, [])  # (as read before c0 was stored)
        repeat = group.receive(code, "decisions", 0.1, "c0")
        for _ in range(200_000):  # a turn at a time: the refused write's look-up, caught before it ran
            if group._looking:
                break
            await asyncio.sleep(0)
        [look] = group._looking
        look.cancel()
        with pytest.raises(NotPersisted, match="server is stopping") as refused:
            await asyncio.wait_for(repeat, 2)
        assert refused.type is NotPersisted
        assert await asyncio.wait_for(group.receive(code, "decisions", 0.1, "c0"), 2) == first


async def test_a_look_up_of_a_refused_write_that_fails_refuses_its_frame_as_not_persisted(tmp_path: Path) -> None:
    """A member's ids here miss a frame stored before: its repeat's write is refused by the
    database's unique index and looked up, and the look-up fails because the database file is
    gone (its folder moved away: the writer's open connection still writes, a new reader's cannot
    open it). Whether the frame was stored is not known: it is refused with ``NotPersisted``
    (``not_persisted``, the client sends it again), not as unstorable. It was refused with the
    write's own refusal, ``game_error``, which a client never sends again. Back, the database
    answers the frame sent again with its stored seq."""
    (tmp_path / "db").mkdir()
    async with live_pair(tmp_path / "db", NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        group, first = await _reloaded(pair)
        code = pair.codes[0]
        group.load_client_ids(code, [])  # (as read before c0 was stored)
        (tmp_path / "db").rename(tmp_path / "gone")
        pair.db.engine.dispose()  # the readers' idle connections closed: a look-up opens the file anew
        try:
            with pytest.raises(NotPersisted, match="could not be checked") as refused:
                await asyncio.wait_for(group.receive(code, "decisions", 0.1, "c0"), 5)
        finally:
            (tmp_path / "gone").rename(tmp_path / "db")
        assert refused.type is NotPersisted and refused.value.code == "not_persisted"
        assert not group._held and not group._looking
        assert await asyncio.wait_for(group.receive(code, "decisions", 0.1, "c0"), 5) == first


async def test_a_held_frame_refused_with_nobody_awaiting_its_answer_is_not_logged_as_never_retrieved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Held frames whose answers nobody awaits (sent without awaiting, as the benchmark does; a
    connection closed meanwhile) are refused: one behind a read that fails (``NotPersisted``), one
    the game refuses behind a look-up (``InvalidDecision``). A refusal nobody waits for is no
    error: asyncio logged "Future exception was never retrieved" when their futures were dropped."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    async with live_pair(tmp_path, NewBlock(0, 10.0, None, None, 0.0, "fixed", [[0, 1]])) as pair:
        other = pair.codes[1]
        await filtered(pair.group, other)
        repeat = pair.group.receive(other, "decisions", 0.1, "c0")
        pair.group.receive(other, "decisions", "no number", "c6")  # held behind the look-up, dropped
        await asyncio.wait_for(repeat, 2)
        group, _ = await _reloaded(pair)
        await pair.db.write(_events_gone)
        group.receive(pair.codes[0], "decisions", 0.1, "c0")  # held behind the read, which fails; dropped
        for _ in range(1000):  # (bounded: 1 s)
            if not group._held:
                break
            await asyncio.sleep(0.001)
        assert not group._held
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
