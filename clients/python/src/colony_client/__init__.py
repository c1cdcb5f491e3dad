"""Colony's Python client (asyncio): talks to a Colony gateway over its protobuf/TCP protocol
(proto/PROTOCOL.md), with the protocol's retry rules built in."""

from .client import PROTOCOL_VERSION, Client, ClientOptions, ItemOutcome, Outcome, Session
from .errors import Code, ColonyError, RetryClass, after_attempts, may_have_applied, retry_class
from .framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge, encode_frame
from .results import Committed, Entry, MultiCommitted, Read
from .transaction import (
    AccessName,
    IdempotencyKey,
    MultiTransaction,
    Operations,
    Participant,
    Transaction,
    VisibilityName,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "ClientOptions",
    "ItemOutcome",
    "Outcome",
    "Session",
    "Code",
    "ColonyError",
    "RetryClass",
    "after_attempts",
    "may_have_applied",
    "retry_class",
    "DEFAULT_MAX_FRAME_BYTES",
    "FrameDecoder",
    "FrameTooLarge",
    "encode_frame",
    "Committed",
    "Entry",
    "MultiCommitted",
    "Read",
    "AccessName",
    "IdempotencyKey",
    "MultiTransaction",
    "Operations",
    "Participant",
    "Transaction",
    "VisibilityName",
]
