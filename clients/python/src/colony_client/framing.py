"""Frames on the wire: a 4-byte big-endian length, then that many bytes of one protobuf
message. The decoder follows arriving chunks and refuses a claimed length over the limit before
any of its bytes arrive."""

from __future__ import annotations

import struct
from typing import List

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
"""The largest frame the gateway accepts by default (announced in HelloResult)."""


class FrameTooLarge(Exception):
    """A frame's claimed length is over the limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"a frame of {length} bytes is over the limit of {limit}")
        self.length = length
        self.limit = limit


def encode_frame(message: bytes) -> bytes:
    """Prefixes a message with its length."""
    return struct.pack(">I", len(message)) + message


class FrameDecoder:
    """Cuts a byte stream into frames."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)

    def push(self, chunk: bytes) -> List[bytes]:
        """Adds received bytes; returns the messages of the frames they complete, in order."""
        self._buffer += chunk
        frames: List[bytes] = []
        start = 0
        while len(self._buffer) - start >= 4:
            (length,) = struct.unpack_from(">I", self._buffer, start)
            if length > self._max:
                raise FrameTooLarge(length, self._max)
            if len(self._buffer) - start < 4 + length:
                break
            frames.append(bytes(self._buffer[start + 4 : start + 4 + length]))
            start += 4 + length
        del self._buffer[:start]
        return frames
