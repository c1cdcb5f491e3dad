"""Builders for transactions on one player and across players, and their protobuf form.

    buy = (Transaction("alice").acting_for("alice")
           .increment("gold", -30, "private", min=0)
           .set("sword", "iron", "public")
           .read("gold"))

Visibility is always stated on writes: writing a name with the other visibility moves it, so a
default could silently publish or hide an entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Literal, Optional, Union

from ._gen.colony.v1 import colony_pb2 as pb

VisibilityName = Literal["public", "private"]
AccessName = Literal["owner", "public"]


@dataclass(frozen=True)
class IdempotencyKey:
    """Identifies one logical write so a retry applies at most once (PROTOCOL.md, "Idempotency")."""

    client_id: str
    request_id: int

    def to_proto(self) -> pb.IdempotencyKey:
        return pb.IdempotencyKey(client_id=self.client_id, request_id=self.request_id)


def _visibility(name: VisibilityName) -> pb.Visibility:
    if name == "public":
        return pb.VISIBILITY_PUBLIC
    if name == "private":
        return pb.VISIBILITY_PRIVATE
    raise ValueError(f"visibility must be 'public' or 'private', not {name!r}")


def _access(name: AccessName) -> pb.Access:
    if name == "owner":
        return pb.ACCESS_OWNER
    if name == "public":
        return pb.ACCESS_PUBLIC
    raise ValueError(f"access must be 'owner' or 'public', not {name!r}")


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _integer(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


class Operations:
    """The operations of one player's part: reads, writes and checks, applied in order."""

    def __init__(self) -> None:
        self._ops: List[pb.Operation] = []
        self._writes = False

    def read(self, *names: str) -> "Operations":
        """Reads the named fields and counters, or every visible entry when no name is given."""
        self._ops.append(pb.Operation(read=pb.ReadFields(names=list(names))))
        return self

    def set(self, name: str, value: Union[str, bytes], visibility: VisibilityName) -> "Operations":
        """Sets a field (bytes; a str is sent as UTF-8)."""
        self._writes = True
        self._ops.append(
            pb.Operation(set_field=pb.SetField(name=name, value=_bytes(value), visibility=_visibility(visibility)))
        )
        return self

    def delete_field(self, name: str) -> "Operations":
        """Deletes a field (no error if absent)."""
        self._writes = True
        self._ops.append(pb.Operation(delete_field=pb.DeleteField(name=name)))
        return self

    def increment(
        self,
        name: str,
        delta: int,
        visibility: VisibilityName,
        *,
        min: Optional[int] = None,
        max: Optional[int] = None,
    ) -> "Operations":
        """Adds `delta` to a counter (absent counters are 0), failing OUT_OF_BOUNDS outside
        [min, max]."""
        self._writes = True
        op = pb.IncrementCounter(name=name, delta=_integer(delta, "delta"), visibility=_visibility(visibility))
        if min is not None:
            op.min = _integer(min, "min")
        if max is not None:
            op.max = _integer(max, "max")
        self._ops.append(pb.Operation(increment_counter=op))
        return self

    def delete_counter(self, name: str) -> "Operations":
        """Deletes a counter (no error if absent)."""
        self._writes = True
        self._ops.append(pb.Operation(delete_counter=pb.DeleteCounter(name=name)))
        return self

    def check_version(self, expected: int) -> "Operations":
        """Fails the transaction with CONFLICT unless the version is `expected` (0: no player)."""
        self._ops.append(pb.Operation(check_version=pb.CheckVersion(expected=_integer(expected, "expected"))))
        return self

    def check_field(self, name: str, expected: Union[str, bytes, None]) -> "Operations":
        """Fails with CONFLICT unless the field equals `expected`, or is absent when None."""
        check = pb.CheckField(name=name)
        if expected is not None:
            check.expected = _bytes(expected)
        self._ops.append(pb.Operation(check_field=check))
        return self

    @property
    def writes(self) -> bool:
        """True when an operation writes (then an idempotency key is needed)."""
        return self._writes

    @property
    def operations(self) -> List[pb.Operation]:
        return list(self._ops)


class Transaction(Operations):
    """All-or-nothing operations on one player. `access`: "owner" (the player's own session)
    or "public" (reads of public entries and version checks)."""

    def __init__(self, player_id: str, access: AccessName = "owner") -> None:
        super().__init__()
        self.player_id = player_id
        self.access = access
        self._acting: Optional[str] = None
        self._key: Optional[IdempotencyKey] = None

    def acting_for(self, player_id: str) -> "Transaction":
        """Through the game role: the player on whose behalf this runs."""
        self._acting = player_id
        return self

    def with_key(self, key: IdempotencyKey) -> "Transaction":
        """Sets the idempotency key; without one the client takes its next key when it writes."""
        self._key = key
        return self

    @property
    def key(self) -> Optional[IdempotencyKey]:
        return self._key

    def to_proto(self, key: Optional[IdempotencyKey] = None) -> pb.Transaction:
        """The protobuf message, with `key` when the transaction has none of its own."""
        chosen = self._key or key
        t = pb.Transaction(
            player_id=self.player_id,
            access=_access(self.access),
            operations=self._ops,
            acting_player_id=self._acting or "",
        )
        if chosen is not None:
            t.idempotency_key.CopyFrom(chosen.to_proto())
        return t

    # Builder methods return the Transaction itself, for chaining with typed results.
    def read(self, *names: str) -> "Transaction":
        super().read(*names)
        return self

    def set(self, name: str, value: Union[str, bytes], visibility: VisibilityName) -> "Transaction":
        super().set(name, value, visibility)
        return self

    def delete_field(self, name: str) -> "Transaction":
        super().delete_field(name)
        return self

    def increment(
        self, name: str, delta: int, visibility: VisibilityName, *, min: Optional[int] = None, max: Optional[int] = None
    ) -> "Transaction":
        super().increment(name, delta, visibility, min=min, max=max)
        return self

    def delete_counter(self, name: str) -> "Transaction":
        super().delete_counter(name)
        return self

    def check_version(self, expected: int) -> "Transaction":
        super().check_version(expected)
        return self

    def check_field(self, name: str, expected: Union[str, bytes, None]) -> "Transaction":
        super().check_field(name, expected)
        return self


class Participant(Operations):
    """One player's part of a multi-player transaction."""

    def __init__(self, player_id: str, access: AccessName) -> None:
        super().__init__()
        self.player_id = player_id
        self.access = access


class MultiTransaction:
    """All-or-nothing operations on several players (a trade, a gift), usually on different
    shards. The first participant is the primary; the whole has one idempotency key.

        trade = (MultiTransaction().acting_for("alice")
                 .participant("alice", lambda p: p.increment("gold", -10, "private", min=0))
                 .participant("bob", lambda p: p.increment("gold", 10, "private"), "public"))
    """

    def __init__(self) -> None:
        self._parts: List[Participant] = []
        self._acting: Optional[str] = None
        self._key: Optional[IdempotencyKey] = None

    def participant(
        self, player_id: str, build: Callable[[Participant], object], access: AccessName = "owner"
    ) -> "MultiTransaction":
        """Adds a participant; `access` decides what its reads and checks see (default owner)."""
        part = Participant(player_id, access)
        build(part)
        self._parts.append(part)
        return self

    def acting_for(self, player_id: str) -> "MultiTransaction":
        """Through the game role: the participant on whose behalf this runs."""
        self._acting = player_id
        return self

    def with_key(self, key: IdempotencyKey) -> "MultiTransaction":
        """Sets the idempotency key; without one the client takes its next key."""
        self._key = key
        return self

    @property
    def key(self) -> Optional[IdempotencyKey]:
        return self._key

    @property
    def participants(self) -> List[Participant]:
        return list(self._parts)

    def to_proto(self, key: Optional[IdempotencyKey] = None) -> pb.MultiTransaction:
        chosen = self._key or key
        m = pb.MultiTransaction(
            participants=[
                pb.Participant(player_id=p.player_id, access=_access(p.access), operations=p.operations)
                for p in self._parts
            ],
            acting_player_id=self._acting or "",
        )
        if chosen is not None:
            m.idempotency_key.CopyFrom(chosen.to_proto())
        return m
