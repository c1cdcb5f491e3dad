"""What the client does with a gateway that answers badly: an oversized length, bytes that are
not protobuf, an answer to no request. A stand-in server speaks the frames (this is the
client's input path; the real gateway is tested in test_gateway.py)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any, AsyncIterator, Awaitable, Callable, List, Tuple

import pytest

from colony_client import Client, Code, ColonyError, FrameDecoder, Transaction, encode_frame
from colony_client._gen.colony.v1 import colony_pb2 as pb

Reply = Callable[[pb.ClientFrame, asyncio.StreamWriter], None]


class StandIn:
    """A server that accepts the Hello, then answers each request with `reply`."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.writers: List[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        decoder = FrameDecoder()
        hello = True
        try:
            while chunk := await reader.read(65536):
                for message in decoder.push(chunk):
                    request = pb.ClientFrame.FromString(message)
                    request_id = request.request_id
                    if hello:
                        hello = False
                        answer = pb.ServerFrame(
                            request_id=request_id,
                            hello=pb.HelloResult(
                                role=pb.ROLE_ADMIN, max_frame_bytes=1 << 20, max_in_flight=8, max_transactions_per_batch=16
                            ),
                        )
                        writer.write(encode_frame(answer.SerializeToString()))
                    else:
                        self.reply(request, writer)
        except (OSError, asyncio.CancelledError):
            pass

    async def stop(self) -> None:
        for w in self.writers:
            w.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def stand_in() -> AsyncIterator[Callable[[Reply], Awaitable[Tuple[StandIn, Client]]]]:
    made: List[Tuple[StandIn, Client]] = []

    async def make(reply: Reply) -> Tuple[StandIn, Client]:
        server = StandIn(reply)
        address = await server.start()
        client = await Client.connect(address, "t", request_deadline=0.4, backoff_base=0.005, backoff_max=0.02)
        made.append((server, client))
        return server, client

    yield make
    for server, client in made:
        client.close()
        await server.stop()


def write() -> Transaction:
    return Transaction("p").increment("gold", 1, "public")


async def fails_with(awaitable: Awaitable[object], *codes: Code) -> None:
    with pytest.raises(ColonyError) as error:
        await awaitable
    assert error.value.code in codes, str(error.value)


async def test_a_claimed_length_over_the_limit_ends_the_connection_and_the_write_is_unknown(stand_in: Any) -> None:
    server, client = await stand_in(lambda _, w: w.write(struct.pack(">I", 0x7FFFFFFF)))
    await fails_with(client.execute(write()), Code.UNKNOWN)
    # It tried again on new connections, with the same key, until the deadline.
    assert server.connections >= 2


async def test_bytes_that_are_not_protobuf_end_the_connection(stand_in: Any) -> None:
    _, client = await stand_in(lambda _, w: w.write(encode_frame(b"\x0f\xff\xff")))
    await fails_with(client.get_player("p"), Code.UNAVAILABLE)
    await fails_with(client.execute(write()), Code.UNKNOWN)


async def test_an_answer_to_no_request_is_ignored_and_the_right_one_still_arrives(stand_in: Any) -> None:
    def reply(request: pb.ClientFrame, w: asyncio.StreamWriter) -> None:
        request_id = request.request_id
        stray = pb.ServerFrame(request_id=request_id + 1000, error=pb.RequestError(code=pb.CODE_INVALID, message="stray"))
        w.write(encode_frame(stray.SerializeToString()))
        right = pb.ServerFrame(request_id=request_id, batch=pb.BatchResult(results=[pb.TransactionResult(version=1)]))
        w.write(encode_frame(right.SerializeToString()))

    server, client = await stand_in(reply)
    assert (await client.execute(write())).version == 1
    assert server.connections == 1


async def test_a_batch_answered_with_the_wrong_number_of_results_is_internal(stand_in: Any) -> None:
    def reply(request: pb.ClientFrame, w: asyncio.StreamWriter) -> None:
        w.write(encode_frame(pb.ServerFrame(request_id=request.request_id, batch=pb.BatchResult()).SerializeToString()))

    _, client = await stand_in(reply)
    await fails_with(client.execute(write()), Code.INTERNAL)


async def test_a_request_over_the_announced_frame_limit_is_refused_before_it_is_sent(stand_in: Any) -> None:
    def reply(request: pb.ClientFrame, w: asyncio.StreamWriter) -> None:
        raise AssertionError("nothing may be sent")

    _, client = await stand_in(reply)
    await fails_with(client.execute(Transaction("p").set("big", b"\x00" * (2 << 20), "public")), Code.TOO_LARGE)


async def test_answers_in_any_order_reach_their_own_callers(stand_in: Any) -> None:
    # Holds three requests, then answers them last first, each with a version taken from its
    # own player id ("p-7" gets version 7).
    held: List[pb.ClientFrame] = []

    def reply(request: pb.ClientFrame, w: asyncio.StreamWriter) -> None:
        held.append(request)
        if len(held) < 3:
            return
        for r in reversed(held):
            version = int(r.batch.transactions[0].player_id.split("-")[1])
            answer = pb.ServerFrame(request_id=r.request_id, batch=pb.BatchResult(results=[pb.TransactionResult(version=version)]))
            w.write(encode_frame(answer.SerializeToString()))

    _, client = await stand_in(reply)
    answers = await asyncio.gather(*(client.execute(Transaction(f"p-{n}").increment("g", 1, "public")) for n in (5, 6, 7)))
    assert [a.version for a in answers] == [5, 6, 7]
