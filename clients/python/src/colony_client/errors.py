"""Result codes as errors: what each means for a retry (proto/PROTOCOL.md, "Result codes and
retries"), and whether an answer with it may follow a write that applied."""

from __future__ import annotations

import enum
from typing import Literal, Optional, TypeVar, Union

RetryClass = Literal["never", "same_request", "after_reread"]


class Code(enum.IntEnum):
    """The protocol's result codes (colony.v1.Code), named without their CODE_ prefix."""

    OK = 0
    CONFLICT = 1
    NOT_FOUND = 2
    OUT_OF_BOUNDS = 3
    INVALID = 4
    UNAUTHENTICATED = 5
    FORBIDDEN = 6
    TOO_LARGE = 7
    UNAVAILABLE = 8
    TIMEOUT = 9
    UNKNOWN = 10
    IDEMPOTENCY_MISMATCH = 11
    INTERNAL = 12
    PLAYER_TOO_LARGE = 13
    REQUEST_TOO_OLD = 14
    LOCKED = 15

    @classmethod
    def of(cls, number: int) -> "Code":
        """The code with this number; an unknown number (a newer gateway) reads as INTERNAL."""
        try:
            return cls(number)
        except ValueError:
            return cls.INTERNAL


_SAME_REQUEST = {Code.UNAVAILABLE, Code.TIMEOUT, Code.UNKNOWN, Code.LOCKED}


def retry_class(code: Code) -> Union[RetryClass, Literal["none"]]:
    """How a request answered with `code` may be retried; "none" for OK."""
    if code == Code.OK:
        return "none"
    if code == Code.CONFLICT:
        return "after_reread"
    if code in _SAME_REQUEST:
        return "same_request"
    return "never"


def may_have_applied(code: Code) -> bool:
    """Whether an answer with this code may follow a write that applied: only OK, UNKNOWN and
    INTERNAL. Every other code means this attempt applied nothing."""
    return code in (Code.OK, Code.UNKNOWN, Code.INTERNAL)


class ColonyError(Exception):
    """A request or transaction that did not succeed, with the gateway's code.

    `version` is the player's current version and `failed_operation` the index of the failing
    operation where the answer says; `failed_participant` is the failing participant's
    position (from 0) in a multi-player transaction."""

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        version: Optional[int] = None,
        failed_operation: Optional[int] = None,
        failed_participant: Optional[int] = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.detail = message
        self.version = version
        self.failed_operation = failed_operation
        self.failed_participant = failed_participant

    @property
    def retry(self) -> RetryClass:
        """How this failure may be retried."""
        r = retry_class(self.code)
        return "never" if r == "none" else r

    @property
    def retryable(self) -> bool:
        """True when sending the very same request again may succeed."""
        return self.retry == "same_request"

    @property
    def may_have_applied(self) -> bool:
        """True when the request may have applied although it failed (UNKNOWN, INTERNAL)."""
        return may_have_applied(self.code)


O = TypeVar("O")

_SETTLES_NOTHING = {Code.UNAVAILABLE, Code.TIMEOUT, Code.LOCKED, Code.REQUEST_TOO_OLD}


def after_attempts(latest: O, earlier: Optional[O]) -> O:
    """The outcome of a request over its attempts: once an attempt was sent without an answer
    (UNKNOWN), a later one that was not sent or did not run (UNAVAILABLE, TIMEOUT, LOCKED) or
    whose window could no longer judge it (REQUEST_TOO_OLD) settles nothing, so the outcome
    stays UNKNOWN. Any other answer settles it."""
    if (
        isinstance(latest, ColonyError)
        and isinstance(earlier, ColonyError)
        and earlier.code == Code.UNKNOWN
        and latest.code in _SETTLES_NOTHING
    ):
        return earlier
    return latest
