"""The journal file: records that survive a reopen, torn and stale records dropped, one owner."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.storage import journal as journal_module
from server.storage.journal import (
    HEADER_SIZE,
    VERSION,
    DamagedHeader,
    Journal,
    JournalBusy,
    JournalError,
    Record,
    scan,
)
from tests.server.harness import timeout

SIZE = 64 * 1024
RECORD_HEAD = 12  # length, salt, crc32

# A process that owns the journal: it loads the module from its file (not the whole server
# package, which takes seconds to import), opens the journal, says so, and holds it until its
# stdin closes (hold < 0) or for `hold` seconds.
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("journal_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
journal = module.Journal.open(sys.argv[2], size=int(sys.argv[3]))
print("locked", flush=True)
hold = float(sys.argv[4])
sys.stdin.read() if hold < 0 else time.sleep(hold)
journal.close()
"""


@contextlib.contextmanager
def held(path: Path, hold: float = -1.0) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the journal at ``path`` while the block runs."""
    args = [sys.executable, "-c", HOLDER, journal_module.__file__, str(path), str(SIZE), str(hold)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=timeout(10))
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def journal_at(tmp_path: Path) -> Path:
    return tmp_path / "events.journal"


def filled(path: Path, *payloads: bytes) -> list[Record]:
    """A journal at ``path`` holding ``payloads``, closed again: the records appended."""
    with Journal.open(str(path), size=SIZE) as journal:
        return [journal.append(payload) for payload in payloads]


def payloads(path: Path) -> list[bytes]:
    with Journal.open(str(path), size=SIZE) as journal:
        return [record.payload for record in journal.records()]


def write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


def header(version: int = VERSION, pass_: int = 1, salt: int = 7) -> bytes:
    head = struct.pack("<8sHQI", b"SYNCLABJ", version, pass_, salt)
    return head + struct.pack("<I", zlib.crc32(head))


def test_appended_records_come_back_in_order_after_a_reopen(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    with Journal.open(str(path), size=SIZE) as journal:
        assert (journal.pass_, journal.offset, journal.records()) == (1, HEADER_SIZE, [])
        first = journal.append(b"one")
        second = journal.append(b"second record")
        assert first == Record(1, HEADER_SIZE, HEADER_SIZE + RECORD_HEAD + 3, b"one")
        assert second == Record(1, first.end, first.end + RECORD_HEAD + 13, b"second record")
        assert journal.offset == second.end
        # records() is what open() found, not what was appended since
        assert journal.records() == []
    assert path.stat().st_size == SIZE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    magic, version, pass_, salt, crc = struct.unpack_from("<8sHQII", path.read_bytes())
    assert (magic, version, pass_) == (b"SYNCLABJ", VERSION, 1)
    assert salt != 0
    assert crc == zlib.crc32(path.read_bytes()[:22])
    assert path.read_bytes()[26:HEADER_SIZE] == bytes(HEADER_SIZE - 26)
    head = struct.unpack_from("<III", path.read_bytes(), HEADER_SIZE)  # zlib's CRC-32, whichever computed it
    assert head == (3, salt, zlib.crc32(b"one", zlib.crc32(struct.pack("<II", salt, 3))))

    with Journal.open(str(path), size=SIZE) as journal:
        assert journal.records() == [first, second]
        assert (journal.pass_, journal.offset) == (1, second.end)
    assert scan(str(path)) == (1, [first, second])


def test_a_record_torn_in_its_payload_is_dropped_and_written_over(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    one, two, three = filled(path, b"one", b"two", b"three")
    os.truncate(path, three.offset + RECORD_HEAD + 2)

    with Journal.open(str(path), size=SIZE) as journal:
        assert journal.records() == [one, two]
        assert journal.offset == two.end
        four = journal.append(b"four")
        assert four.offset == three.offset
    assert payloads(path) == [b"one", b"two", b"four"]


def test_a_record_with_damaged_payload_bytes_is_dropped(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    one, _, three = filled(path, b"one", b"two", b"three")
    write_at(path, three.offset + RECORD_HEAD + 1, b"XY")
    with Journal.open(str(path), size=SIZE) as journal:
        assert [record.payload for record in journal.records()] == [b"one", b"two"]
        assert journal.offset == three.offset
    assert one.offset == HEADER_SIZE


def test_a_bad_checksum_in_the_middle_stops_the_scan_there(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    one, two, _, _ = filled(path, b"one", b"two", b"three", b"four")
    write_at(path, two.offset + 8, b"\0\0\0\0")  # the crc32 of the second record
    with Journal.open(str(path), size=SIZE) as journal:
        assert journal.records() == [one]
        assert journal.offset == two.offset


def test_a_restart_hides_the_old_pass_though_its_bytes_remain(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    with Journal.open(str(path), size=SIZE) as journal:
        for payload in (b"old one", b"old two", b"old three"):
            journal.append(payload)
        journal.restart()
        assert (journal.pass_, journal.offset, journal.records()) == (2, HEADER_SIZE, [])
    assert b"old three" in path.read_bytes()
    assert scan(str(path)) == (2, [])

    with Journal.open(str(path), size=SIZE) as journal:
        assert (journal.pass_, journal.offset, journal.records()) == (2, HEADER_SIZE, [])
        new = journal.append(b"new")
    with Journal.open(str(path), size=SIZE) as journal:
        assert journal.records() == [new]
        assert new.pass_ == 2


def test_a_record_of_the_old_pass_after_the_new_pass_end_is_not_read(tmp_path: Path) -> None:
    # the second pass writes the same first record over the first pass's, byte for byte but for
    # the salt: right after it lies the first pass's second record, intact but for the old salt
    path = journal_at(tmp_path)
    with Journal.open(str(path), size=SIZE) as journal:
        first, stale = journal.append(b"same"), journal.append(b"stale")
        salt_before = path.read_bytes()[18:22]
        journal.restart()
        again = journal.append(b"same")
    assert (again.offset, again.end) == (first.offset, first.end)
    assert path.read_bytes()[18:22] != salt_before
    assert path.read_bytes()[stale.offset + RECORD_HEAD : stale.end] == b"stale"
    with Journal.open(str(path), size=SIZE) as journal:
        assert journal.records() == [Record(2, first.offset, first.end, b"same")]
        assert journal.offset == first.end


def test_appends_past_the_size_grow_the_file(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    size = HEADER_SIZE + 100
    with Journal.open(str(path), size=size) as journal:
        assert path.stat().st_size == size
        records = [journal.append(bytes([n]) * 60) for n in range(1, 6)]
        records.append(journal.append(b"x" * 3 * SIZE))
    assert path.stat().st_size == records[-1].end
    with Journal.open(str(path), size=size) as journal:
        assert journal.records() == records


def test_another_process_holding_the_journal_makes_open_busy(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    with held(path), pytest.raises(JournalBusy, match=str(path)):
        Journal.open(str(path), size=SIZE)
    Journal.open(str(path), size=SIZE).close()


def test_a_second_open_in_the_same_process_is_busy_until_the_first_closes(tmp_path: Path) -> None:
    # flock belongs to the open file description: two os.open()s conflict even in one process
    path = journal_at(tmp_path)
    first = Journal.open(str(path), size=SIZE)
    with pytest.raises(JournalBusy):
        Journal.open(str(path), size=SIZE)
    first.close()
    first.close()  # twice: nothing
    with pytest.raises(JournalError, match="closed"):
        first.append(b"late")
    Journal.open(str(path), size=SIZE).close()


def test_wait_blocks_until_the_owner_lets_go(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    with held(path, hold=0.3), concurrent.futures.ThreadPoolExecutor(1) as pool:
        began = time.monotonic()
        opening = pool.submit(Journal.open, str(path), size=SIZE, wait=True)
        journal = opening.result(timeout=timeout(10))
        waited = time.monotonic() - began
    journal.close()
    assert waited > 0.1


def test_the_lock_does_not_stop_a_scan(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    records = filled(path, b"one", b"two")
    with held(path):
        assert scan(str(path)) == (1, records)


def test_a_foreign_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    content = b"SQLite format 3\0" + bytes(SIZE)
    path.write_bytes(content)
    with pytest.raises(JournalError, match="not a synclab journal"):
        Journal.open(str(path), size=SIZE)
    with pytest.raises(JournalError):
        scan(str(path))
    assert path.read_bytes() == content
    Journal.open(str(path.with_name("other")), size=SIZE).close()  # the lock was let go of


def test_another_version_is_refused_by_its_number(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    path.write_bytes(header(version=2).ljust(SIZE, b"\0"))
    with pytest.raises(JournalError, match="version 2"):
        Journal.open(str(path), size=SIZE)


def test_a_damaged_header_is_refused(tmp_path: Path) -> None:
    path = journal_at(tmp_path)
    filled(path, b"one")
    write_at(path, 10, b"\x09")  # the pass number, under the checksum
    with pytest.raises(JournalError, match="damaged"):
        Journal.open(str(path), size=SIZE)
    # a valid header of our own making works, and its records are read with its salt
    path.write_bytes(header(pass_=3, salt=7).ljust(SIZE, b"\0"))
    assert scan(str(path)) == (3, [])


def test_a_damaged_header_is_mended_as_told_and_the_records_read_with_it(tmp_path: Path) -> None:
    """``mend`` is told the salt the first whole record carries (it decides the pass: see
    ``server.storage.recovery.mend_header``); the header it returns is written and synced."""
    path = journal_at(tmp_path)
    appended = filled(path, b"one", b"two")
    with Journal.open(str(path), size=SIZE) as journal:
        pass_, salt = journal.pass_, journal.salt
    write_at(path, 10, b"\x09")  # the pass number, under the checksum
    told: list[int | None] = []

    def mend(damaged: DamagedHeader) -> tuple[int, int]:
        told.append(damaged.first_salt)
        return pass_, salt

    with pytest.raises(DamagedHeader):
        scan(str(path))
    with Journal.open(str(path), size=SIZE, mend=mend) as journal:
        assert [r.payload for r in journal.records()] == [b"one", b"two"]
        assert (journal.pass_, journal.salt, journal.offset) == (pass_, salt, appended[-1].end)
    assert told == [salt]
    assert scan(str(path)) == (pass_, appended)  # whole again on the disk: no mend needed
    # a wrong salt reads no record (the records are never taken for another pass's)
    write_at(path, 10, b"\x09")
    with Journal.open(str(path), size=SIZE, mend=lambda damaged: (pass_ + 1, salt ^ 1)) as journal:
        assert journal.records() == []
    # no whole first record: nothing tells a salt
    empty = tmp_path / "empty"
    filled(empty)
    write_at(empty, 10, b"\x09")
    write_at(empty, HEADER_SIZE, struct.pack("<III", 3, 5, 0) + b"abc")  # a record whose checksum is wrong
    told.clear()
    with Journal.open(str(empty), size=SIZE, mend=mend) as journal:
        assert journal.records() == []
    assert told == [None]


@pytest.mark.parametrize("length", [0, 100, HEADER_SIZE, SIZE])
def test_a_creation_cut_short_is_created_again(tmp_path: Path, length: int) -> None:
    path = journal_at(tmp_path)
    path.write_bytes(bytes(length))
    assert scan(str(path)) is None
    with Journal.open(str(path), size=SIZE) as journal:
        assert (journal.pass_, journal.offset, journal.records()) == (1, HEADER_SIZE, [])
        journal.append(b"one")
    assert path.stat().st_size == SIZE
    assert payloads(path) == [b"one"]


def test_a_zeroed_header_in_front_of_records_is_mended_as_a_damaged_one(tmp_path: Path) -> None:
    # not a creation cut short: recreating it would throw acknowledged records away
    path = journal_at(tmp_path)
    appended = filled(path, b"one", b"two")
    with Journal.open(str(path), size=SIZE) as journal:
        pass_, salt = journal.pass_, journal.salt
    write_at(path, 0, bytes(HEADER_SIZE))
    with pytest.raises(DamagedHeader, match="zeroed, records follow it") as refused:
        Journal.open(str(path), size=SIZE)  # no mend given: refused, the file as it was
    assert refused.value.first_salt == salt
    with pytest.raises(DamagedHeader):
        scan(str(path))
    with Journal.open(str(path), size=SIZE, mend=lambda damaged: (pass_, damaged.first_salt or 0)) as journal:
        assert [r.payload for r in journal.records()] == [b"one", b"two"]
        assert journal.offset == appended[-1].end
    assert scan(str(path)) == (pass_, appended)
    assert scan(str(tmp_path / "absent")) is None


def test_zeros_in_front_of_what_is_not_a_record_are_refused_and_left_alone(tmp_path: Path) -> None:
    # nothing says it is a journal of ours: it may be another program's file at that path
    path = journal_at(tmp_path)
    content = bytes(HEADER_SIZE) + struct.pack("<III", 3, 5, 0) + b"abc" + bytes(SIZE)
    path.write_bytes(content)
    told: list[int | None] = []

    def mend(damaged: DamagedHeader) -> tuple[int, int]:
        told.append(damaged.first_salt)
        return 1, 7

    with pytest.raises(JournalError, match="zeroed and what follows it is not a record") as refused:
        Journal.open(str(path), size=SIZE, mend=mend)
    assert not isinstance(refused.value, DamagedHeader) and told == []
    with pytest.raises(JournalError, match="not a record"):
        scan(str(path))
    assert path.read_bytes() == content


@pytest.mark.parametrize("call", ["fdatasync", "pwrite"])
def test_a_failed_write_or_sync_breaks_the_journal_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    path = journal_at(tmp_path)
    journal = Journal.open(str(path), size=SIZE)
    one = journal.append(b"one")
    real = getattr(os, call)
    failures = iter([OSError(errno.EIO, "I/O error")])

    def fails_once(*args: object) -> object:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args)

    monkeypatch.setattr(os, call, fails_once)
    with pytest.raises(OSError, match="I/O error"):
        journal.append(b"two")
    assert journal.broken
    with pytest.raises(JournalError, match="broken"):
        journal.append(b"three")
    with pytest.raises(JournalError, match="broken"):
        journal.restart()
    journal.close()
    monkeypatch.undo()

    # a record whose sync failed was never acknowledged: found again or not, it is harmless
    with Journal.open(str(path), size=SIZE) as journal:
        assert journal.records()[0] == one
        assert [record.payload for record in journal.records()][1:] in ([], [b"two"])


def test_an_empty_payload_is_refused(tmp_path: Path) -> None:
    with Journal.open(str(journal_at(tmp_path)), size=SIZE) as journal:
        with pytest.raises(ValueError):
            journal.append(b"")
        assert journal.offset == HEADER_SIZE
        assert not journal.broken
