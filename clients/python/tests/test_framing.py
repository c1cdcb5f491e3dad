"""Frames cut from a byte stream however it arrives; an oversized length refused at once."""

from __future__ import annotations

import struct

import pytest

from colony_client import FrameDecoder, FrameTooLarge, encode_frame


def test_frames_arriving_a_byte_at_a_time_come_out_whole_and_in_order() -> None:
    messages = [b"\x01\x02\x03", b"", b"\x07" * 300]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += decoder.push(stream[i : i + 1])
    assert out == messages
    assert decoder.pending_bytes == 0


def test_several_frames_in_one_chunk_and_one_split_across_chunks() -> None:
    joined = encode_frame(b"\x09") + encode_frame(b"\x08\x08")
    decoder = FrameDecoder()
    assert decoder.push(joined[:7]) == [b"\x09"]
    assert decoder.push(joined[7:]) == [b"\x08\x08"]


def test_a_claimed_length_over_the_limit_is_refused_before_its_bytes_arrive() -> None:
    with pytest.raises(FrameTooLarge) as refused:
        FrameDecoder(1024).push(struct.pack(">I", 1025))
    assert refused.value.length == 1025
    assert len(FrameDecoder(1024).push(encode_frame(b"\x00" * 1024))) == 1
