"""A member's client frame ids in memory (server/clientids.py): exact for the last ones, a filter
for the older ones that never misses an id it was given."""

from __future__ import annotations

import asyncio

import pytest

from server import clientids
from server.clientids import MAYBE, ClientIds, IdFilter


def test_the_filter_never_misses_an_id_it_was_given_and_rarely_claims_another() -> None:
    ids = [f"page{i % 97:02d}-{i * 7919:x}-{i}" for i in range(60_000)]
    others = [f"other-{i * 104729:x}" for i in range(60_000)]
    seen = IdFilter()
    for key in ids:
        seen.add(key)
    assert all(key in seen for key in ids)
    claimed = sum(key in seen for key in others)
    assert claimed < len(others) * 0.005  # about 0.06 % measured (five parts, 300,000 ids)
    assert seen.count == len(ids)
    assert seen.nbytes() / len(ids) < 12  # a kept id costs about 140 bytes
    assert 1 not in seen and "anything" not in IdFilter()


def test_an_ids_bits_are_a_pair_by_each_12_bits_of_its_mixed_hash() -> None:
    """``_mask`` writes its five pairs out: the bits of the loop over ``PROBES // 2`` it replaced."""
    def looped(h: int) -> int:
        bits, mask = ((h * clientids._MIX) & clientids._WORD) >> 4, 0
        for _ in range(clientids.PROBES // 2):
            mask |= clientids._PAIRS[bits & 4095]
            bits >>= 12
        return mask

    hashes = [0, 1, clientids._WORD, *(hash(f"id-{i}") & clientids._WORD for i in range(20_000))]
    assert [clientids._mask(h) for h in hashes] == [looped(h) for h in hashes]


def test_the_last_ids_are_kept_exactly_and_older_ones_are_maybe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clientids, "KEPT", 3)
    ids = ClientIds()
    for seq in range(1, 11):
        ids.stored(f"c{seq}", seq * 10)
        assert ids.get(f"c{seq}") == seq * 10
    assert len(ids) == 10
    assert [ids.get(f"c{seq}") for seq in range(8, 11)] == [80, 90, 100]  # the last KEPT at least
    assert all(ids.get(f"c{seq}") is MAYBE for seq in range(1, 4))
    assert ids.get("never") is None


async def test_an_id_under_way_stays_until_it_settles_and_a_failed_one_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clientids, "KEPT", 1)
    ids = ClientIds()
    pending: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    ids.under_way("slow", pending)
    for seq in range(1, 6):
        ids.stored(f"c{seq}", seq)
    assert ids.get("slow") is pending  # never moved to the filter while under way
    ids.stored("slow", 99)
    assert ids.get("slow") == 99
    ids.under_way("lost", pending)
    ids.forget("lost")
    assert ids.get("lost") is None


def test_without_a_database_to_ask_every_id_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clientids, "KEPT", 2)
    ids = ClientIds(forgets=False)
    for seq in range(1, 20):
        ids.stored(f"c{seq}", seq)
    assert [ids.get(f"c{seq}") for seq in range(1, 20)] == list(range(1, 20))


def test_ids_loaded_from_the_database_keep_the_newest_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clientids, "KEPT", 2)
    ids = ClientIds([(f"c{seq}", seq) for seq in range(1, 9)])  # oldest first, as the seat's load reads them
    assert (ids.get("c8"), ids.get("c7")) == (8, 7)
    assert ids.get("c1") is MAYBE
    assert len(ids) == 8


def test_an_id_looked_up_goes_to_the_filter_by_the_mask_made_then_and_such_masks_stay_few(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mask made when a new id is looked up is the one added later (made once a decision,
    not twice); masks of ids looked up that never settle are not kept for ever."""
    monkeypatch.setattr(clientids, "KEPT", 4)
    monkeypatch.setattr(clientids, "MASKS_KEPT", 16)
    made: list[int] = []
    mask = clientids._mask

    def counted(h: int) -> int:
        made.append(h)
        return mask(h)

    monkeypatch.setattr(clientids, "_mask", counted)
    ids = ClientIds([(f"old{seq}", seq) for seq in range(20)])  # the filter in use
    made.clear()
    for seq in range(100, 400):
        assert ids.get(f"c{seq}") is None
        ids.stored(f"c{seq}", seq)
    # one mask an id, its look-up's, added with it (the loaded ids kept as they were get theirs as they go)
    assert 300 <= len(made) <= 300 + 2 * 4
    assert all(ids.get(f"c{seq}") is MAYBE for seq in range(100, 380))  # none missed
    for seq in range(1000, 1100):  # looked up, never stored nor forgotten (say the group was taken over)
        assert ids.get(f"lost{seq}") is None
        ids.stored(f"c{seq}", seq)
    assert len(ids._masks) <= 16 + 2 * 4
    ids.get("gone")
    ids.forget("gone")
    assert "gone" not in ids._masks
