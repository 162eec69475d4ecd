"""A member's client frame ids, kept in memory that does not grow by a string per decision.

The wire contract: a repeated ``"id"`` from the same participant is acknowledged again with the
first ``seq`` and stored once. A live group used to keep every id its members sent, with its
``seq``: about 140 bytes a decision, about a gigabyte an hour for a group that takes 2,000
decisions a second (bench/README.md, "Memory over time").

:class:`ClientIds` keeps the ids still being stored (their futures) and the last :data:`KEPT`
stored ones as they are. Older ids go into an :class:`IdFilter`, about seven bytes each, which
tells at once that an id was never sent (nearly every id a client sends) and otherwise says
:data:`MAYBE`: a repeat of an old frame, or, rarely, a new id that shares its bits. The caller
then asks the database, whose table ``client_ids`` (with the events a journal has not added
there yet: ``server.storage.frameids``) holds the answer (``server.live.LiveGroup.receive``).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Iterable
from typing import Any, Final

#: stored ids kept as they are, per member, at least (at most twice as many): a retry after a
#: reconnect repeats the last few
KEPT = 64
#: the most masks of ids looked up that :class:`ClientIds` keeps (each about 100 bytes)
MASKS_KEPT = 4 * KEPT
#: the filter's first size (ids); each next one holds four times as many
FIRST_CAPACITY = 1024
#: bits of the filter an id is given (measured: 0.06 % false positives over five parts)
BITS_PER_ID = 48
#: bits set per id within its 64-bit word, two by each 12 bits of its (mixed) hash
PROBES = 10  # (five pairs: :func:`_mask` writes them out)
_WORD = (1 << 64) - 1
#: Fibonacci hashing's multiplier: the word's bits are taken from the hash mixed by it, not
#: from the low bits that chose the word
_MIX = 0x9E3779B97F4A7C15


class _Maybe:
    """An id the filter may have seen: the database decides."""

    def __repr__(self) -> str:
        return "MAYBE"


MAYBE: Final = _Maybe()


#: the two bits of a word that each 12 bits of a hash choose
_PAIRS = [(1 << (x & 63)) | (1 << (x >> 6)) for x in range(4096)]


def _mask(h: int) -> int:
    """The bits of one 64-bit word an id's hash sets (:data:`PROBES` of them, or fewer where two coincide):
    a pair by each 12 bits of the 60 above the mixed hash's lowest 4 (the five written out, not
    looped over: two masks are made per decision in a long run, one to look an id up, one to add it)."""
    bits = ((h * _MIX) & _WORD) >> 4
    return (
        _PAIRS[bits & 4095] | _PAIRS[(bits >> 12) & 4095] | _PAIRS[(bits >> 24) & 4095]
        | _PAIRS[(bits >> 36) & 4095] | _PAIRS[bits >> 48]
    )


class IdFilter:
    """A blocked Bloom filter of strings that grows: no false negatives, rare false positives.

    Each id sets a few bits of one 64-bit word, chosen by its hash (the interpreter's hash of a
    string, keyed at random per process), so a look is one word per part. A part full at its
    capacity is followed by one four times larger; every part is looked at.
    """

    def __init__(self) -> None:
        self._parts: list[array[int]] = []
        #: ids the last part has room for still
        self._room = 0
        self.count = 0

    def add(self, key: str, mask: int | None = None) -> None:
        """Add ``key``; ``mask``: its :func:`_mask`, if made already (when it was looked up)."""
        if self._room == 0:
            capacity = FIRST_CAPACITY * 4 ** len(self._parts)
            self._parts.append(array("Q", bytes(8 * capacity * BITS_PER_ID // 64)))
            self._room = capacity
        words = self._parts[-1]
        h = hash(key) & _WORD
        words[h % len(words)] |= _mask(h) if mask is None else mask
        self._room -= 1
        self.count += 1

    def __contains__(self, key: object) -> bool:
        if not self._parts or not isinstance(key, str):
            return False
        h = hash(key) & _WORD
        return self.holds(h, _mask(h))

    def holds(self, h: int, mask: int) -> bool:
        """Whether an id of hash ``h`` (``hash(id) & _WORD``) and ``mask`` (its :func:`_mask`) may have been added."""
        for words in self._parts:  # noqa: SIM110  (a loop: any() over a generator cost ~3,000 instructions a look, one a decision)
            if words[h % len(words)] & mask == mask:
                return True
        return False

    def nbytes(self) -> int:
        return sum(words.itemsize * len(words) for words in self._parts)


class ClientIds:
    """One member's client frame ids: each one's ``seq`` (or the future of it while it is stored),
    the last :data:`KEPT` stored ones or more exactly, older ones as :data:`MAYBE` (see the module).

    ``stored``: the member's ids in the database, oldest first (a seat's load), with their ``seq``.
    ``forgets``: whether older ids may go to the filter; without a database to ask, every id is kept.
    """

    def __init__(self, stored: Iterable[tuple[str, int]] = (), *, forgets: bool = True) -> None:
        #: ids being stored (their futures) and the last stored ones, oldest first
        self._ids: dict[str, int | asyncio.Future[Any]] = {}
        self._older = IdFilter()
        self._forgets = forgets
        #: the :func:`_mask` of ids looked up and not found, until they go to the filter (or are
        #: forgotten): two fifths of the filter's work per decision, made once, not again when the
        #: id is added (a cache: cleared past :data:`MASKS_KEPT`, an id without one is masked anew)
        self._masks: dict[str, int] = {}
        for key, seq in stored:
            self.stored(key, seq)

    def get(self, key: str) -> int | asyncio.Future[Any] | _Maybe | None:
        """The id's ``seq``, or its future while it is stored; :data:`MAYBE`; ``None``: never sent."""
        found = self._ids.get(key)
        if found is not None:
            return found
        if not self._older.count:
            return None
        h = hash(key) & _WORD
        mask = _mask(h)
        if self._older.holds(h, mask):
            return MAYBE
        self._masks[key] = mask  # a new id, nearly always: stored soon, added to the filter later
        return None

    def under_way(self, key: str, future: asyncio.Future[Any]) -> None:
        """The frame with this id is being stored (or looked up): repeats meanwhile wait for ``future``."""
        self._ids[key] = future

    def stored(self, key: str, seq: int) -> None:
        """The frame with this id is stored at ``seq``.

        Once twice :data:`KEPT` ids are kept, the oldest half go to the filter (those still under
        way stay): a string a decision no longer stays in memory, at one pass over the kept ids
        every :data:`KEPT` decisions.
        """
        self._ids[key] = seq
        if self._forgets and len(self._ids) > 2 * KEPT:
            ids, masks = self._ids, self._masks
            for old in list(ids)[: len(ids) - KEPT]:
                if not isinstance(ids[old], asyncio.Future):
                    del ids[old]
                    self._older.add(old, masks.pop(old, None))
            if len(masks) > MASKS_KEPT:  # ids looked up that never settled here: not kept for ever
                masks.clear()

    def forget(self, key: str) -> None:
        """The frame with this id was not stored: a retry may try again."""
        self._ids.pop(key, None)
        self._masks.pop(key, None)

    def __len__(self) -> int:
        """The ids it knows of: kept ones and those in the filter."""
        return len(self._ids) + self._older.count
