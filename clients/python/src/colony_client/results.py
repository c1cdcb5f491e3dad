"""Typed results: what a committed transaction, a player read or a trade returned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional, Union

from ._gen.colony.v1 import colony_pb2 as pb
from .errors import Code, ColonyError
from .transaction import VisibilityName


@dataclass(frozen=True)
class Entry:
    """One field (`value` is bytes) or counter (`value` is int) as read."""

    kind: Literal["field", "counter"]
    name: str
    visibility: VisibilityName
    value: Union[bytes, int]


@dataclass(frozen=True)
class Read:
    """What one ReadFields operation returned; `operation_index` counts from 0."""

    operation_index: int
    entries: List[Entry]


@dataclass(frozen=True)
class Committed:
    """A committed (or read) transaction on one player."""

    version: int
    reads: List[Read] = field(default_factory=list)
    replayed: bool = False
    """True when this is the stored first result of an already applied request."""

    @property
    def entries(self) -> List[Entry]:
        """Every entry of every read, in order."""
        return [e for r in self.reads for e in r.entries]

    def field(self, name: str) -> Optional[bytes]:
        """A field's value as read (the last read that returned it), or None."""
        found = [e.value for e in self.entries if e.kind == "field" and e.name == name]
        value = found[-1] if found else None
        return value if isinstance(value, bytes) else None

    def text(self, name: str) -> Optional[str]:
        """A field's value as UTF-8 text, or None."""
        value = self.field(name)
        return None if value is None else value.decode()

    def counter(self, name: str) -> Optional[int]:
        """A counter's value as read, or None."""
        found = [e.value for e in self.entries if e.kind == "counter" and e.name == name]
        value = found[-1] if found else None
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class MultiCommitted:
    """A committed multi-player transaction: one result per participant, in order."""

    participants: List[Committed]
    replayed: bool = False


def _entry(e: pb.Entry) -> Entry:
    visibility: VisibilityName = "private" if e.visibility == pb.VISIBILITY_PRIVATE else "public"
    if e.WhichOneof("value") == "counter":
        return Entry("counter", e.name, visibility, e.counter)
    return Entry("field", e.name, visibility, e.bytes)


def _reads(reads: "list[pb.ReadResult]") -> List[Read]:
    return [Read(r.operation_index, [_entry(e) for e in r.entries]) for r in reads]


def committed_of(r: pb.TransactionResult) -> Committed:
    """A TransactionResult as a value; raises the ColonyError it carries."""
    code = Code.of(r.code)
    if code != Code.OK:
        raise ColonyError(code, r.message or "failed", version=r.version, failed_operation=r.failed_operation)
    return Committed(r.version, _reads(list(r.reads)), r.replayed)


def multi_committed_of(r: pb.MultiTransactionResult) -> MultiCommitted:
    """A MultiTransactionResult as a value; raises the ColonyError it carries."""
    code = Code.of(r.code)
    if code != Code.OK:
        if r.failed_participant > 0:
            raise ColonyError(
                code,
                r.message or "failed",
                failed_participant=r.failed_participant - 1,
                version=r.version,
                failed_operation=r.failed_operation,
            )
        raise ColonyError(code, r.message or "failed")
    return MultiCommitted([Committed(p.version, _reads(list(p.reads)), r.replayed) for p in r.participants], r.replayed)
