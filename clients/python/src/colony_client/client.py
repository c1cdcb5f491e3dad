"""The gateway client (asyncio): one connection carrying many requests in flight, matched by
request id; the Hello with its token; optional TLS; a new connection after a lost one; and the
retry rules of proto/PROTOCOL.md — UNAVAILABLE, TIMEOUT, UNKNOWN and LOCKED are sent again
unchanged (same idempotency key) with capped exponential backoff and full jitter until the
request deadline, an outcome once UNKNOWN stays UNKNOWN until an attempt answers definitely,
and every other code is final."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Union, cast

from google.protobuf.message import DecodeError

from ._gen.colony.v1 import colony_pb2 as pb
from .errors import Code, ColonyError, after_attempts
from .framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge, encode_frame
from .results import Committed, MultiCommitted, committed_of, multi_committed_of
from .transaction import AccessName, IdempotencyKey, MultiTransaction, Transaction, _access

PROTOCOL_VERSION = 1
"""The protocol version this client speaks."""

Outcome = Union[Committed, ColonyError]
"""One transaction's result in a batch: its value, or why it failed."""
ItemOutcome = Union[Committed, MultiCommitted, ColonyError]
"""One item's result in a batch of transactions and multi-player transactions."""


@dataclass(frozen=True)
class Session:
    """The gateway's answer to Hello: the connection's role and limits."""

    role: Literal["game", "admin"]
    max_frame_bytes: int
    max_in_flight: int
    max_transactions_per_batch: int
    server_version: str


def _unavailable(reason: str) -> ColonyError:
    return ColonyError(Code.UNAVAILABLE, reason)


def _split_address(address: str) -> "tuple[str, int]":
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ColonyError(Code.INVALID, f"gateway address {address!r} is not host:port")
    return host.strip("[]"), int(port)


class _Connection:
    """One live, authenticated connection and its reader task."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame_bytes: int) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: Dict[int, "asyncio.Future[pb.ServerFrame]"] = {}
        self.closed = False
        self.session: Optional[Session] = None
        self._decoder = FrameDecoder(max_frame_bytes)
        self._reader_task: Optional["asyncio.Task[None]"] = None

    @classmethod
    async def open(cls, o: "ClientOptions") -> "_Connection":
        host, port = _split_address(o.address)
        context: Optional[ssl.SSLContext] = None
        if o.tls_ca is not None or o.tls:
            context = ssl.create_default_context(cadata=o.tls_ca) if o.tls_ca else ssl.create_default_context()
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=(o.tls_server_name or host) if context else None
            )
        except (OSError, ssl.SSLError) as e:
            raise _unavailable(f"cannot connect to {o.address}: {e}") from e
        conn = cls(reader, writer, o.max_frame_bytes)
        hello = pb.ClientFrame(
            request_id=0,
            hello=pb.Hello(token=o.token, client_name=o.client_name, protocol_version=PROTOCOL_VERSION),
        )
        writer.write(encode_frame(hello.SerializeToString()))
        try:
            answer = await conn._read_frame()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as e:
            conn._close_socket()
            raise _unavailable(f"the gateway closed the connection during Hello: {e}") from e
        except (FrameTooLarge, DecodeError) as e:
            conn._close_socket()
            raise ColonyError(Code.INTERNAL, f"from the gateway: {e}") from e
        body = answer.WhichOneof("body")
        if body == "go_away":
            conn._close_socket()
            raise ColonyError(Code.of(answer.go_away.code), answer.go_away.reason)
        if body != "hello":
            conn._close_socket()
            raise ColonyError(Code.INTERNAL, "unexpected answer to Hello")
        h = answer.hello
        conn.session = Session(
            role="admin" if h.role == pb.ROLE_ADMIN else "game",
            max_frame_bytes=h.max_frame_bytes,
            max_in_flight=h.max_in_flight,
            max_transactions_per_batch=h.max_transactions_per_batch,
            server_version=h.server_version,
        )
        conn._reader_task = asyncio.get_running_loop().create_task(conn._read_loop())
        return conn

    async def _read_frame(self) -> pb.ServerFrame:
        while True:
            chunk = await self.reader.read(64 * 1024)
            if not chunk:
                raise asyncio.IncompleteReadError(b"", None)
            frames = self._decoder.push(chunk)
            if frames:
                # Before the Hello is answered nothing else may arrive.
                hello: pb.ServerFrame = pb.ServerFrame.FromString(frames[0])
                return hello

    async def _read_loop(self) -> None:
        reason = "closed by the gateway"
        try:
            while True:
                chunk = await self.reader.read(64 * 1024)
                if not chunk:
                    break
                for message in self._decoder.push(chunk):
                    frame = pb.ServerFrame.FromString(message)
                    if frame.WhichOneof("body") == "go_away":
                        # No new requests go here; answers to sent ones may still come.
                        self.closed = True
                        continue
                    future = self.pending.pop(frame.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(frame)
        except (FrameTooLarge, DecodeError) as e:
            reason = f"from the gateway: {e}"
        except (OSError, ssl.SSLError) as e:
            reason = f"connection error: {e}"
        except asyncio.CancelledError:
            reason = "closed by the client"
        finally:
            self.fail(reason)

    def send(self, frame: pb.ClientFrame) -> None:
        message = frame.SerializeToString()
        limit = self.session.max_frame_bytes if self.session else DEFAULT_MAX_FRAME_BYTES
        if len(message) > limit:
            raise ColonyError(Code.TOO_LARGE, f"request of {len(message)} bytes over the gateway's {limit}")
        self.writer.write(encode_frame(message))

    def fail(self, reason: str) -> None:
        """Ends the connection: everything in flight fails (writes UNKNOWN). Idempotent."""
        self.closed = True
        self._close_socket()
        lost = ColonyError(Code.UNKNOWN, f"connection to the gateway lost: {reason}")
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(lost)

    def _close_socket(self) -> None:
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass

    def stop(self) -> None:
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()
        self.fail("closed by the client")


@dataclass
class ClientOptions:
    """How to reach and talk to a gateway."""

    address: str
    """The gateway, host:port."""
    token: str
    """A token from the gateway's configuration; it decides the connection's role."""
    client_name: str = "colony-python-client"
    client_id: str = ""
    """Client id of the idempotency keys the client makes: unique per process (default: a UUID)."""
    connect_timeout: float = 2.0
    request_deadline: float = 5.0
    """Seconds allowed for one call, retries and reconnections included."""
    backoff_base: float = 0.010
    backoff_max: float = 0.500
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    tls: bool = False
    """TLS to the gateway with the system's trusted certificates (or `tls_ca`)."""
    tls_ca: Optional[str] = None
    """PEM text of the certificates to trust; implies TLS."""
    tls_server_name: Optional[str] = None
    """The name the gateway's certificate must carry (default: the host)."""


@dataclass
class _Prepared:
    item: pb.BatchItem
    writes: bool


class Client:
    """A gateway client. One instance shares one connection among all its calls; use it from
    one event loop."""

    def __init__(self, options: ClientOptions) -> None:
        if not options.client_id:
            options.client_id = f"py-{uuid.uuid4()}"
        self._o = options
        self._conn: Optional[_Connection] = None
        self._opening: Optional["asyncio.Future[_Connection]"] = None
        self._next_request_id = 1
        self._next_key = 1
        self._closed_by_caller = False

    @classmethod
    async def connect(cls, address: str, token: str, **settings: Any) -> "Client":
        """Connects and authenticates; raises the gateway's code (e.g. UNAUTHENTICATED).
        `settings` are further fields of ClientOptions (an unknown one is a TypeError)."""
        return await cls.connect_with(ClientOptions(address, token, **settings))

    @classmethod
    async def connect_with(cls, options: ClientOptions) -> "Client":
        """Connects and authenticates with the given options."""
        client = cls(options)
        await client._connection(time.monotonic() + client._o.connect_timeout)
        return client

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def client_id(self) -> str:
        return self._o.client_id

    def next_key(self) -> IdempotencyKey:
        """A fresh idempotency key: this client's id and the next request number."""
        key = IdempotencyKey(self._o.client_id, self._next_key)
        self._next_key += 1
        return key

    async def session(self) -> Session:
        """The role and limits the gateway announced on the current connection."""
        conn = await self._connection(time.monotonic() + self._o.connect_timeout)
        assert conn.session is not None
        return conn.session

    def close(self) -> None:
        """Closes the connection: requests in flight end at once (writes among them UNKNOWN, as
        for any lost connection, and are not retried), and later calls fail UNAVAILABLE at once,
        without connecting again."""
        self._closed_by_caller = True
        if self._conn is not None:
            self._conn.stop()
            self._conn = None

    async def execute(self, transaction: Transaction) -> Committed:
        """Runs one transaction; raises a ColonyError unless it committed."""
        (result,) = await self.execute_batch([transaction])
        if isinstance(result, ColonyError):
            raise result
        return result

    async def execute_batch(self, transactions: Sequence[Transaction]) -> List[Outcome]:
        """Runs transactions in one batch, retrying each retryable one with its own key until it
        settles or the deadline passes. One outcome per transaction, in order (a Committed or a
        ColonyError); raises only when the batch as a whole is refused."""
        results = await self._run_batch([self._prepare(t) for t in transactions], as_items=False)
        return cast(List[Outcome], results)

    async def execute_items(self, items: Sequence[Union[Transaction, MultiTransaction]]) -> List[ItemOutcome]:
        """Runs a batch mixing transactions and multi-player transactions; one outcome per item."""
        return await self._run_batch([self._prepare(i) for i in items], as_items=True)

    async def execute_multi(self, transaction: MultiTransaction) -> MultiCommitted:
        """Runs one multi-player transaction; raises a ColonyError unless it committed."""
        (result,) = await self.execute_items([transaction])
        if isinstance(result, ColonyError):
            raise result
        assert isinstance(result, MultiCommitted)
        return result

    async def get_player(
        self, player_id: str, *, access: AccessName = "owner", acting_for: Optional[str] = None
    ) -> Committed:
        """Reads a whole player as its owner or as the public; `acting_for` is required for the
        game role."""
        frame = pb.ClientFrame(
            get_player=pb.GetPlayer(player_id=player_id, access=_access(access), acting_player_id=acting_for or "")
        )
        return await self._read_with_retries(frame)

    async def login(self, player_id: str) -> Committed:
        """Logs a player in: marks it active and returns everything it owns."""
        return await self._read_with_retries(pb.ClientFrame(login=pb.Login(player_id=player_id)))

    async def ping(self) -> float:
        """A round trip to the gateway, in seconds."""
        started = time.monotonic()
        nonce = random.getrandbits(63)
        answer = await self._call(pb.ClientFrame(ping=pb.Ping(nonce=nonce)), started + self._o.request_deadline)
        if answer.WhichOneof("body") != "pong" or answer.pong.nonce != nonce:
            raise ColonyError(Code.INTERNAL, "unexpected answer to a ping")
        return time.monotonic() - started

    def _prepare(self, t: Union[Transaction, MultiTransaction]) -> _Prepared:
        if isinstance(t, Transaction):
            key = self.next_key() if t.writes and t.key is None else None
            return _Prepared(pb.BatchItem(transaction=t.to_proto(key)), t.writes)
        key = self.next_key() if t.key is None else None
        return _Prepared(pb.BatchItem(multi=t.to_proto(key)), True)

    async def _connection(self, deadline: float) -> _Connection:
        if self._closed_by_caller:
            raise _unavailable("the client was closed")
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._opening is None:
            timeout = max(0.0, min(self._o.connect_timeout, deadline - time.monotonic()))
            self._opening = asyncio.ensure_future(asyncio.wait_for(_Connection.open(self._o), timeout))
            try:
                conn = await self._opening
            except asyncio.TimeoutError as e:
                raise _unavailable(f"connecting to {self._o.address} timed out") from e
            finally:
                self._opening = None
            if self._closed_by_caller:
                conn.stop()
                raise _unavailable("the client was closed")
            self._conn = conn
            return conn
        try:
            return await asyncio.shield(self._opening)
        except asyncio.TimeoutError as e:
            raise _unavailable(f"connecting to {self._o.address} timed out") from e

    async def _call(self, frame: pb.ClientFrame, deadline: float) -> pb.ServerFrame:
        """Sends one request and waits for its answer until `deadline` (no retry)."""
        if time.monotonic() >= deadline:
            raise ColonyError(Code.TIMEOUT, "the deadline passed before sending")
        conn = await self._connection(deadline)
        if conn.closed:
            raise _unavailable("connection closed before sending")
        request_id = self._next_request_id
        self._next_request_id += 1
        frame.request_id = request_id
        future: "asyncio.Future[pb.ServerFrame]" = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = future
        try:
            conn.send(frame)
        except ColonyError:
            conn.pending.pop(request_id, None)
            raise
        except (OSError, RuntimeError) as e:
            conn.pending.pop(request_id, None)
            raise _unavailable(f"connection closed before sending: {e}") from e
        # The deadline as a timer on the future itself: cheaper than a task per request, which
        # is what asyncio.wait_for would make.
        timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), _expire, conn, request_id, future
        )
        try:
            if conn.writer.transport.get_write_buffer_size() > _WRITE_BUFFER_HIGH:
                # The gateway is not reading (backpressure): wait for the buffer to drain.
                await asyncio.wait_for(conn.writer.drain(), max(0.0, deadline - time.monotonic()))
            answer = await future
        except (asyncio.TimeoutError, OSError, RuntimeError) as e:
            conn.pending.pop(request_id, None)
            raise ColonyError(Code.UNKNOWN, f"no answer from the gateway in time: {e}") from e
        finally:
            timer.cancel()
        if answer.WhichOneof("body") == "error":
            raise ColonyError(Code.of(answer.error.code), answer.error.message)
        if answer.WhichOneof("body") is None:
            raise ColonyError(Code.INTERNAL, "empty answer")
        return answer

    def _backoff(self, attempt: int, deadline: float) -> float:
        """Uniform in [0, min(max, base * 2^attempt)], within the deadline."""
        cap = min(self._o.backoff_max, self._o.backoff_base * 2 ** min(attempt, 30))
        return min(random.uniform(0, cap), max(0.0, deadline - time.monotonic()))

    async def _run_batch(self, items: List[_Prepared], as_items: bool) -> List[ItemOutcome]:
        """Sends what is pending, keeps each item's latest outcome, retries the retryable ones."""
        deadline = time.monotonic() + self._o.request_deadline
        results: List[Optional[ItemOutcome]] = [None] * len(items)
        pending = list(range(len(items)))
        attempt = 0
        while pending:
            if as_items:
                batch = pb.Batch(items=[items[i].item for i in pending])
            else:
                batch = pb.Batch(transactions=[items[i].item.transaction for i in pending])
            per_item: List[ItemOutcome]
            try:
                answer = await self._call(pb.ClientFrame(batch=batch), deadline)
                got = answer.batch if answer.WhichOneof("body") == "batch" else None
                if got is not None and as_items and len(got.items) == len(pending):
                    per_item = [_item_outcome(r) for r in got.items]
                elif got is not None and not as_items and len(got.results) == len(pending):
                    per_item = [_outcome(r) for r in got.results]
                else:
                    raise ColonyError(Code.INTERNAL, "unexpected answer to a batch")
            except ColonyError as error:
                if attempt == 0 and not error.retryable:
                    raise
                # After a first attempt the batch is no longer the unit: each item keeps what
                # earlier attempts said (an unknown outcome stays unknown).
                per_item = [_for_item(error, items[i]) for i in pending]
            again: List[int] = []
            for i, latest in zip(pending, per_item):
                settled = after_attempts(latest, results[i])
                results[i] = settled
                if (
                    isinstance(settled, ColonyError)
                    and settled.retryable
                    and time.monotonic() < deadline
                    and not self._closed_by_caller
                ):
                    again.append(i)
            pending = again
            if pending:
                await asyncio.sleep(self._backoff(attempt, deadline))
                attempt += 1
                if time.monotonic() >= deadline:
                    break
        return [r if r is not None else ColonyError(Code.INTERNAL, "no result") for r in results]

    async def _read_with_retries(self, frame: pb.ClientFrame) -> Committed:
        deadline = time.monotonic() + self._o.request_deadline
        attempt = 0
        while True:
            try:
                answer = await self._call(frame, deadline)
                if answer.WhichOneof("body") != "player":
                    raise ColonyError(Code.INTERNAL, "unexpected answer to a player request")
                return committed_of(answer.player)
            except ColonyError as e:
                error = e
                # A read applies nothing: a lost answer leaves it merely unavailable.
                if error.code == Code.UNKNOWN:
                    error = _unavailable(error.detail)
                if not error.retryable or time.monotonic() >= deadline or self._closed_by_caller:
                    raise error from None
                await asyncio.sleep(self._backoff(attempt, deadline))
                attempt += 1
                if time.monotonic() >= deadline:
                    raise error from None


_WRITE_BUFFER_HIGH = 1024 * 1024
"""Bytes queued on the socket past which a call waits for them to drain."""


def _expire(conn: _Connection, request_id: int, future: "asyncio.Future[pb.ServerFrame]") -> None:
    """A request's deadline passed without an answer: its outcome is unknown."""
    conn.pending.pop(request_id, None)
    if not future.done():
        future.set_exception(ColonyError(Code.UNKNOWN, "no answer from the gateway in time"))


def _outcome(r: pb.TransactionResult) -> ItemOutcome:
    try:
        return committed_of(r)
    except ColonyError as e:
        return e


def _item_outcome(r: pb.BatchItemResult) -> ItemOutcome:
    try:
        if r.WhichOneof("item") == "multi":
            return multi_committed_of(r.multi)
        if r.WhichOneof("item") == "transaction":
            return committed_of(r.transaction)
        return ColonyError(Code.INTERNAL, "an empty item result")
    except ColonyError as e:
        return e


def _for_item(error: ColonyError, item: _Prepared) -> ItemOutcome:
    """A whole-call failure as one item sees it: a lost connection leaves a read merely
    unavailable."""
    if error.code == Code.UNKNOWN and not item.writes:
        return ColonyError(Code.UNAVAILABLE, error.detail)
    return error
