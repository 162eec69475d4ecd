"""What ``synclab verify`` finds (:mod:`server.verify`): its :class:`Report`, the errors that stop
it, and how a finding names its place (experiment, group, participant, ``seq``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .exceptions import SynclabError


class VerifyError(SynclabError):
    """Verification could not run: an unknown experiment, or a game that cannot be loaded."""


class UnknownExperiment(VerifyError):
    """No experiment has the code asked for."""


@dataclass
class Report:
    """What :func:`server.verify.verify` checked and found. ``problems`` make it fail; ``notes`` do not."""

    code: str
    events: int = 0
    groups: int = 0
    sessions: int = 0
    unfinished_sessions: int = 0
    results: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        """The human report: one line per finding, then the counts and the verdict."""
        lines = [f"MISMATCH {p}" for p in self.problems] + [f"note: {n}" for n in self.notes]
        verdict = "OK" if self.ok else f"{len(self.problems)} mismatch{'es' if len(self.problems) != 1 else ''}"
        lines.append(
            f"synclab verify {self.code}: checked {self.events} events, {self.groups} groups, "
            f"{self.sessions} finished sessions ({self.unfinished_sessions} unfinished), "
            f"{self.results} results: {verdict}"
        )
        return "\n".join(lines)


def place(code: str, *, group: int | None = None, participant: str | None = None, seq: int | None = None) -> str:
    """Where a finding is: ``experiment CODE group G participant P seq N``, the parts that apply."""
    parts = [f"experiment {code}"]
    if group is not None:
        parts.append(f"group {group}")
    if participant is not None:
        parts.append(f"participant {participant}")
    if seq is not None:
        parts.append(f"seq {seq}")
    return " ".join(parts)

