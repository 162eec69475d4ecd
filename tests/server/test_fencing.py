"""The fencing epoch: a write computed under an epoch that is no longer its group's stores nothing."""

from __future__ import annotations

from sqlalchemy import Engine, select

from server.storage import (
    GroupUpdate,
    NewBlock,
    NewEvent,
    NewExperiment,
    Write,
    claim_group,
    commit_writes,
    insert_experiment,
    new_code,
)
from server.storage import events as events_table
from server.storage import experiments as experiments_table
from server.storage import groups as groups_table
from server.storage import participants as participants_table


def two_groups(engine: Engine) -> tuple[int, list[int], list[int]]:
    """A stored experiment of two groups of two: its id, the group ids, the participant ids."""
    codes = [new_code() for _ in range(4)]
    block = NewBlock(0, 60.0, None, None, 0.0, "fixed", [[0, 1], [2, 3]])
    experiment_id = insert_experiment(engine, NewExperiment(new_code(), "bimatrix", {}, 2, codes, [block], 1e9))
    with engine.connect() as conn:
        gids = list(conn.execute(select(groups_table.c.id).where(groups_table.c.experiment_id == experiment_id)
                                 .order_by(groups_table.c.id)).scalars())
        pids = list(conn.execute(select(participants_table.c.id).where(participants_table.c.experiment_id == experiment_id)
                                 .order_by(participants_table.c.index)).scalars())
    return experiment_id, gids, pids


def decision(experiment_id: int, group_id: int, participant_id: int, value: float, epoch: int | None) -> Write:
    return Write(
        experiment_id,
        [NewEvent("decisions", value, 1e9 + value, group_id, participant_id, None)],
        GroupUpdate(group_id, "running", 1e9, 1e9 + 60, None, 0, {"x": value}, {}),
        epoch=epoch,
    )


def stored_values(engine: Engine, experiment_id: int) -> list[tuple[int, float]]:
    with engine.connect() as conn:
        return [(int(s), float(v)) for s, v in conn.execute(
            select(events_table.c.seq, events_table.c.value).where(events_table.c.experiment_id == experiment_id)
            .order_by(events_table.c.seq)
        )]


def test_a_write_under_a_superseded_epoch_stores_nothing_and_the_rest_of_its_batch_is_stored(engine: Engine) -> None:
    """Group 1 claimed at epoch 1, then taken over at epoch 2: a batch with a write of each epoch
    and one of group 2 stores the current ones (consecutive seqs) and marks the old one fenced,
    whose state does not reach the group's row either."""
    experiment_id, (g1, g2), (p1, _p2, p3, _p4) = two_groups(engine)
    assert claim_group(engine, g1, 1)
    with engine.connect() as conn:
        commit_writes(conn, [decision(experiment_id, g1, p1, 0.1, 1)])
    assert claim_group(engine, g1, 2)
    stale, fresh, other = (
        decision(experiment_id, g1, p1, 0.2, 1),
        decision(experiment_id, g1, p1, 0.3, 2),
        decision(experiment_id, g2, p3, 0.4, None),
    )
    with engine.connect() as conn:
        commit_writes(conn, [stale, fresh, other])
    assert (stale.fenced, fresh.fenced, other.fenced) == (True, False, False)
    assert stale.seqs == [] and fresh.seqs == [2] and other.seqs == [3]
    assert stored_values(engine, experiment_id) == [(1, 0.1), (2, 0.3), (3, 0.4)]
    with engine.connect() as conn:
        row = conn.execute(select(groups_table.c.decisions, groups_table.c.epoch).where(groups_table.c.id == g1)).one()
        last_seq = conn.execute(select(experiments_table.c.last_seq).where(experiments_table.c.id == experiment_id)).scalar_one()
    assert row == ({"x": 0.3}, 2) and last_seq == 3


def test_an_epoch_is_only_ever_raised(engine: Engine) -> None:
    """A claim at an epoch not above the stored one changes nothing and says so."""
    _experiment_id, (g1, _g2), _ = two_groups(engine)
    assert claim_group(engine, g1, 5)
    assert not claim_group(engine, g1, 5)
    assert not claim_group(engine, g1, 3)
    with engine.connect() as conn:
        assert conn.execute(select(groups_table.c.epoch).where(groups_table.c.id == g1)).scalar_one() == 5


def test_the_fence_checks_any_number_of_groups_in_one_batch(engine: Engine) -> None:
    """Batches of one to five fenced groups (the fence's statement is prepared per power of two,
    its list padded): each write is checked against its own group's epoch, whatever its place."""
    experiment_id, gids, pids = two_groups(engine)
    more_id, more_gids, more_pids = two_groups(engine)
    places = [(experiment_id, gids[0], pids[0]), (experiment_id, gids[1], pids[2]),
              (more_id, more_gids[0], more_pids[0]), (more_id, more_gids[1], more_pids[2])]
    for _, g, _ in places:
        assert claim_group(engine, g, 7)
    stored = {experiment_id: 0, more_id: 0}
    for count in range(1, 6):
        batch = []
        for i in range(count):
            eid, g, p = places[i % len(places)]
            batch.append(decision(eid, g, p, float(count * 10 + i), 7 if (count + i) % 3 else 6))
        with engine.connect() as conn:
            commit_writes(conn, batch)
        for i, write in enumerate(batch):
            assert write.fenced == ((count + i) % 3 == 0)
            if not write.fenced:
                stored[write.experiment_id] += 1
                assert write.seqs == [stored[write.experiment_id]]
    for eid in stored:
        assert [s for s, _ in stored_values(engine, eid)] == list(range(1, stored[eid] + 1))


def test_a_batch_of_fenced_writes_alone_stores_nothing(engine: Engine) -> None:
    experiment_id, (g1, _g2), (p1, *_) = two_groups(engine)
    assert claim_group(engine, g1, 2)
    stale = decision(experiment_id, g1, p1, 0.5, 1)
    with engine.connect() as conn:
        commit_writes(conn, [stale])
    assert stale.fenced and stale.seqs == []
    assert stored_values(engine, experiment_id) == []
    with engine.connect() as conn:
        assert conn.execute(select(experiments_table.c.last_seq)
                            .where(experiments_table.c.id == experiment_id)).scalar_one() == 0
