"""The journal: an append-only file of checksummed records, synced before a batch is acknowledged.

A journal-first writer appends a batch here and ``fdatasync``s it before the batch is
acknowledged; another thread applies the records to SQLite later. This module is only the file
and its I/O: no SQL, no event loop. The file (every integer little-endian)::

    offset 0      header, one page (HEADER_SIZE): magic "SYNCLABJ", version u16, pass u64,
                  salt u32, crc32 u32 of the bytes before it; the rest of the page is zero
    HEADER_SIZE   records, back to back: length u32, salt u32, crc32 u32 of
                  (salt, length, payload), then the payload

The file is written full of zeros when created, so an append overwrites blocks that exist and
``fdatasync`` has no allocation or extent conversion to commit (``posix_fallocate``'s unwritten
extents would need one). An append past the end grows the file.

A record is valid when its length is positive, at most MAX_RECORD and within the file, its salt
is the header's and its checksum matches. Reading stops at the first record that is not: a torn
write, the zeros never written over, or a record of an earlier pass. Once everything in the
journal has been applied and synced elsewhere, ``restart`` begins a new pass from the top: a
new pass number and a new random salt in the header, so the old records still on disk no longer
match and are never read as new. A crash before the new header is synced leaves the old pass in
place: its records are the ones applied already, which the caller's marker of how far it
applied (``server.storage.journaled``) skips. A header whose checksum or values are wrong (a
torn write, a flipped bit), or zeroed in front of a whole record, is :class:`DamagedHeader`:
every record carries its pass's salt under
its own checksum, so the first whole record tells the salt, and the caller that knows how far
the records were applied tells the pass (``Journal.open``'s ``mend``).

One process owns the file: ``open`` takes an exclusive ``flock`` and a second owner, in this
process or another, gets JournalBusy. ``scan`` reads without the lock (a command that looks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable
from typing import NamedTuple

#: CRC-32 (zlib's polynomial): ``crc32(data, start=0)``; zlib-ng's by the CPU's carry-less
#: multiply, a tenth of zlib's time, the same values; zlib's in an environment made without it
crc32: Callable[..., int] = zlib.crc32
with contextlib.suppress(ImportError):
    from zlib_ng import zlib_ng  # type: ignore[import-not-found,unused-ignore]

    crc32 = zlib_ng.crc32

HEADER_SIZE = 4096
DEFAULT_SIZE = 64 * 1024 * 1024
VERSION = 1
MAGIC = b"SYNCLABJ"
#: a sanity bound on a record's length: a larger one is read as garbage, never allocated
MAX_RECORD = 256 * 1024 * 1024
#: the creation's zeros and the reads at open go in pieces of this size
CHUNK = 1024 * 1024

_HEAD = struct.Struct("<8sHQI")  # magic, version, pass, salt; its crc32 follows
_VERSION_AT = struct.Struct("<8sH")  # what every version must keep in place, to say which it is
_CRC = struct.Struct("<I")
_RECORD = struct.Struct("<III")  # length, salt, crc32
_SALTED = struct.Struct("<II")  # salt, length: what a record's crc32 covers before the payload


class JournalError(Exception):
    """The journal cannot be used: a damaged header, an unknown version, a failed write."""


class JournalBusy(JournalError):
    """Another owner (this process or another) holds the journal's lock."""


class DamagedHeader(JournalError):
    """The header is a synclab journal's of this version, but its checksum or values are wrong
    (a torn write, a flipped bit), or it is all zeros in front of a whole record. ``first_salt``:
    the salt the first record carries, when that record is whole (its checksum covers its salt),
    else ``None`` (never for a zeroed header): the records' pass is known by it, not by the
    header (see :meth:`Journal.open`'s ``mend``)."""

    def __init__(self, message: str, first_salt: int | None) -> None:
        super().__init__(message)
        self.first_salt = first_salt


class Record(NamedTuple):
    """One valid record: its pass, where it starts and ends in the file, its payload.

    A named tuple, as immutable as a frozen dataclass and made in a third of its time (the
    writer thread makes one a batch: :meth:`Journal.append`)."""

    pass_: int
    offset: int
    end: int
    payload: bytes


def _header(pass_: int, salt: int) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, pass_, salt)
    return (head + _CRC.pack(crc32(head))).ljust(HEADER_SIZE, b"\0")


def new_salt(old: int = 0) -> int:
    # never 0 (zeros are what an unwritten file holds), never the pass before's
    while True:
        salt = secrets.randbits(32)
        if salt not in (0, old):
            return salt


def _record_crc(salt: int, payload: bytes | memoryview) -> int:
    return crc32(payload, crc32(_SALTED.pack(salt, len(payload))))


def _read_all(fd: int) -> bytearray:
    data = bytearray(os.fstat(fd).st_size)
    done = 0
    with memoryview(data) as view:
        while done < len(data):
            got = os.preadv(fd, [view[done : done + CHUNK]], done)
            if got == 0:  # shrunk meanwhile: keep what is there
                break
            done += got
    del data[done:]
    return data


def _parse(path: str, data: bytearray) -> tuple[int, int, list[Record]] | None:
    """The pass, salt and valid records of a file's bytes; None for a creation cut short."""
    if len(data) < HEADER_SIZE:
        return None
    if data.count(0, 0, HEADER_SIZE) == HEADER_SIZE:
        # zeros were being written, the header not yet: unless something lies beyond, in which
        # case the header was lost from a journal in use, and recreating it would drop records.
        # A whole record right after it says so (its checksum covers its salt): mend it as any
        # damaged header. Anything else beyond zeros may be another program's file: left alone.
        if data.count(0, HEADER_SIZE) == len(data) - HEADER_SIZE:
            return None
        first = _first_salt(data)
        if first is None:
            raise JournalError(
                f"journal {path}: the header is zeroed and what follows it is not a record of a synclab journal"
            )
        raise DamagedHeader(f"journal {path}: the header is zeroed, records follow it", first)
    magic, version = _VERSION_AT.unpack_from(data)
    if magic != MAGIC:
        raise JournalError(f"journal {path}: not a synclab journal (magic {magic!r})")
    # the version before the checksum: another version may lay out (and check) its header
    # differently, and "version 2" tells an operator more than "bad checksum"
    if version != VERSION:
        raise JournalError(f"journal {path}: format version {version}, this server reads {VERSION}")
    _, _, pass_, salt = _HEAD.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    if crc != crc32(data[: _HEAD.size]) or pass_ < 1 or salt == 0:
        raise DamagedHeader(f"journal {path}: the header is damaged (checksum or values)", _first_salt(data))
    records: list[Record] = []
    pos = HEADER_SIZE
    with memoryview(data) as view:
        while (whole := _whole_record(data, pos)) is not None and whole[0] == salt:
            _, end = whole
            records.append(Record(pass_, pos, end, bytes(view[pos + _RECORD.size : end])))
            pos = end
    return pass_, salt, records


def _whole_record(data: bytearray, pos: int) -> tuple[int, int] | None:
    """(its salt, its end) of the record at ``pos`` if it is whole: its length in bounds, its
    checksum right over its salt and payload; else ``None``."""
    if pos + _RECORD.size > len(data):
        return None
    length, salt, crc = _RECORD.unpack_from(data, pos)
    start, end = pos + _RECORD.size, pos + _RECORD.size + length
    if salt == 0 or not 0 < length <= MAX_RECORD or end > len(data):
        return None
    with memoryview(data) as view:
        return (salt, end) if _record_crc(salt, view[start:end]) == crc else None


def _first_salt(data: bytearray) -> int | None:
    """The salt of the record right after the header, if it is whole: its checksum is over that salt."""
    whole = _whole_record(data, HEADER_SIZE)
    return None if whole is None else whole[0]


def _create(path: str, fd: int, size: int) -> tuple[int, int]:
    """Write the file full of zeros, then the header of pass 1: its (pass, salt)."""
    os.ftruncate(fd, 0)  # whatever a cut-short creation left, start from nothing
    zeros = bytes(CHUNK)
    total, done = max(size, HEADER_SIZE), 0
    while done < total:
        done += os.pwrite(fd, zeros[: min(CHUNK, total - done)], done)
    os.fsync(fd)
    # the file's name is only durable once its directory is synced
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    salt = new_salt()
    os.pwrite(fd, _header(1, salt), 0)
    os.fdatasync(fd)
    return 1, salt


class Journal:
    """An open journal, its lock held. ``size``: the file's length at open (at least the size
    asked for); appends below it overwrite blocks that exist, so a writer restarts the pass when
    ``offset`` reaches it rather than let the file grow."""

    def __init__(
        self, path: str, fd: int, size: int, pass_: int, salt: int, records: list[Record]
    ) -> None:
        self.path = path
        self.size = size
        self.broken = False
        self._fd: int | None = fd
        self._pass = pass_
        self._salt = salt
        self._records = records
        self._offset = records[-1].end if records else HEADER_SIZE
        # appends and restarts from more than one thread keep the position consistent
        self._mutex = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str,
        *,
        size: int = DEFAULT_SIZE,
        wait: bool = False,
        mend: Callable[[DamagedHeader], tuple[int, int]] | None = None,
    ) -> Journal:
        """Open (or create, ``size`` bytes) and lock the journal; its valid records in records().

        JournalBusy when another owner holds it (``wait``: until it is released); JournalError
        for a header that is not this version's synclab journal's, which is never overwritten:
        an operator must look. A :class:`DamagedHeader` is raised too, unless ``mend`` is given:
        it returns the (pass, salt) the header had (told by the records' salt and by whoever
        applied them: ``server.storage.recovery.mend_header``), which is written and synced in
        its place before the records are read.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise JournalBusy(f"journal {path} is locked: another process uses it") from None
            data = _read_all(fd)
            try:
                parsed = _parse(path, data)
            except DamagedHeader as damaged:
                if mend is None:
                    raise
                header = _header(*mend(damaged))
                os.pwrite(fd, header, 0)
                os.fdatasync(fd)
                data[:HEADER_SIZE] = header
                parsed = _parse(path, data)
            if parsed is None:
                pass_, salt = _create(path, fd, size)
                records: list[Record] = []
                length = max(size, HEADER_SIZE)
            else:
                pass_, salt, records = parsed
                length = len(data)
        except BaseException:
            os.close(fd)  # releases the lock too
            raise
        # a file longer than asked for (grown, or made with a larger size) is used whole
        return cls(path, fd, max(size, length), pass_, salt, records)

    @property
    def pass_(self) -> int:
        return self._pass

    @property
    def salt(self) -> int:
        """The current pass's salt: with the pass, it tells this pass from any other file's."""
        return self._salt

    @property
    def offset(self) -> int:
        """Where the next record will be written."""
        return self._offset

    def records(self) -> list[Record]:
        """The valid records ``open`` found (not those appended since); empty after restart()."""
        return list(self._records)

    def _usable(self) -> int:
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        if self.broken:
            raise JournalError(f"journal {self.path} is broken by a failed write or sync")
        return self._fd

    def append(self, payload: bytes) -> Record:
        """Write one record and fdatasync it: once this returns, it survives a crash."""
        length = len(payload)
        if not 0 < length <= MAX_RECORD:
            if not payload:
                raise ValueError("a journal record's payload must not be empty")
            raise ValueError(f"a journal record is at most {MAX_RECORD} bytes, not {length}")
        with self._mutex:
            fd = self._fd
            if fd is None or self.broken:
                fd = self._usable()  # raises
            salt, start = self._salt, self._offset
            # header and payload in one write: a crash tears it at worst (the crc sees it)
            buf = _RECORD.pack(length, salt, _record_crc(salt, payload)) + payload
            try:
                written = os.pwrite(fd, buf, start)
                if written != len(buf):
                    raise OSError(f"short write to the journal: {written} of {len(buf)} bytes")
                os.fdatasync(fd)
            except OSError:
                # after a failed fsync the kernel may have dropped the dirty pages and cleared
                # the error: a later sync could succeed without the data, so stop here for good
                self.broken = True
                raise
            self._offset = end = start + len(buf)
            return Record(self._pass, start, end, payload)

    def restart(self) -> None:
        """Begin a new pass at the top; the caller has applied and synced every record."""
        with self._mutex:
            fd = self._usable()
            pass_, salt = self._pass + 1, new_salt(self._salt)
            try:
                os.pwrite(fd, _header(pass_, salt), 0)  # the meaningful bytes are one sector
                os.fdatasync(fd)
            except OSError:
                self.broken = True
                raise
            self._pass, self._salt, self._offset = pass_, salt, HEADER_SIZE
            self._records = []

    def close(self) -> None:
        """Close the file, which releases the lock. Closing twice does nothing."""
        with self._mutex:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scan(path: str) -> tuple[int, list[Record]] | None:
    """(pass, valid records) without the lock; None for no file or a creation cut short."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        parsed = _parse(path, _read_all(fd))
    finally:
        os.close(fd)
    return None if parsed is None else (parsed[0], parsed[2])
