"""Times as the database stores them (UTC ``datetime``) and as the rest of synclab uses them
(epoch seconds; ISO 8601 text in the REST API; milliseconds on the wire)."""

from __future__ import annotations

from datetime import UTC, datetime


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def to_epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive values; we only ever store UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def iso(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 UTC with microseconds, as the REST API gives it."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")



def ms(value: datetime | None) -> int | None:
    return epoch_ms(to_epoch(value))


def epoch_ms(epoch: float | None) -> int | None:
    return None if epoch is None else round(epoch * 1000)

