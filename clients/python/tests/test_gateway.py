"""The client against a real gateway (started by clients/with-cluster.sh, or the one named by
COLONY_GATEWAY): authentication, transactions and their failures, idempotent replays, batches,
many requests in flight on one connection, trades across players, and the retry rules when a
connection breaks with a write in flight."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import tempfile
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, List, Optional, Tuple

import pytest

from colony_client import Client, Code, ColonyError, Committed, MultiCommitted, MultiTransaction, Transaction

from conftest import required
from proxy import Proxy

GATEWAY = required("COLONY_GATEWAY")
GAME_TOKEN = required("COLONY_GAME_TOKEN")
ADMIN_TOKEN = required("COLONY_ADMIN_TOKEN")
RUN = uuid.uuid4().hex[:8]


def player(name: str) -> str:
    return f"py-{RUN}-{name}"


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    clients: List[Client] = []

    async def make(**settings: Any) -> Client:
        settings.setdefault("token", ADMIN_TOKEN)
        address = settings.pop("address", GATEWAY)
        client = await Client.connect(address, **settings)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@contextlib.asynccontextmanager
async def proxied(tls: Optional[ssl.SSLContext] = None) -> AsyncIterator[Tuple[Proxy, str]]:
    """A proxy in front of the gateway (ending TLS with `tls`), and its address."""
    host, port = GATEWAY.rsplit(":", 1)
    proxy = Proxy(host, int(port), tls=tls)
    try:
        yield proxy, await proxy.start()
    finally:
        await proxy.stop()


async def refused(awaitable: Awaitable[Any], code: Code) -> ColonyError:
    with pytest.raises(ColonyError) as error:
        await awaitable
    assert error.value.code == code, str(error.value)
    return error.value


async def test_the_hello_tells_the_role_and_limits_and_an_unknown_token_is_refused(connect: Any) -> None:
    admin = await connect()
    session = await admin.session()
    assert session.role == "admin"
    assert session.max_in_flight > 0 and session.max_transactions_per_batch > 0 and session.max_frame_bytes > 0
    game = await connect(token=GAME_TOKEN)
    assert (await game.session()).role == "game"
    await refused(Client.connect(GATEWAY, "not-a-token"), Code.UNAUTHENTICATED)
    assert await admin.ping() >= 0


async def test_a_game_server_writes_its_player_and_sees_only_public_entries_of_others(connect: Any) -> None:
    game = await connect(token=GAME_TOKEN)
    alice, bob = player("alice"), player("bob")
    made = await game.execute(
        Transaction(alice)
        .acting_for(alice)
        .check_version(0)
        .set("title", "Dragon slayer", "public")
        .increment("gold", 100, "private", min=0)
        .read("gold", "title")
    )
    assert (made.version, made.counter("gold"), made.text("title"), made.replayed) == (1, 100, "Dragon slayer", False)
    own = await game.get_player(alice, acting_for=alice)
    assert own.version == 1
    assert sorted(e.name for e in own.entries) == ["gold", "title"]
    seen = await game.get_player(alice, access="public", acting_for=bob)
    assert [e.name for e in seen.entries] == ["title"]
    await refused(game.get_player(alice, acting_for=bob), Code.FORBIDDEN)
    await refused(game.get_player(alice), Code.FORBIDDEN)
    await refused(game.login(player("nobody")), Code.NOT_FOUND)
    assert (await game.login(alice)).counter("gold") == 100


async def test_failed_checks_and_bounds_apply_nothing_and_say_where_they_failed(connect: Any) -> None:
    client = await connect()
    carol = player("carol")
    await client.execute(Transaction(carol).increment("gold", 5, "private"))
    conflict = await refused(client.execute(Transaction(carol).set("x", "1", "public").check_version(7)), Code.CONFLICT)
    assert (conflict.version, conflict.failed_operation, conflict.retry) == (1, 1, "after_reread")
    bounds = await refused(
        client.execute(Transaction(carol).increment("gold", -6, "private", min=0)), Code.OUT_OF_BOUNDS
    )
    assert bounds.failed_operation == 0
    await refused(client.execute(Transaction(carol).set("bad name", "1", "public")), Code.INVALID)
    after = await client.get_player(carol)
    assert after.version == 1
    assert [e.name for e in after.entries] == ["gold"]


async def test_the_same_key_replays_the_first_result_and_other_content_is_a_mismatch(connect: Any) -> None:
    client = await connect()
    dave = player("dave")
    key = client.next_key()
    first = await client.execute(Transaction(dave).with_key(key).increment("gold", 7, "public").read("gold"))
    again = await client.execute(Transaction(dave).with_key(key).increment("gold", 7, "public").read("gold"))
    assert again.replayed and again.version == first.version and again.counter("gold") == 7
    await refused(
        client.execute(Transaction(dave).with_key(key).increment("gold", 8, "public")), Code.IDEMPOTENCY_MISMATCH
    )
    assert (await client.get_player(dave)).counter("gold") == 7


async def test_a_batch_answers_each_transaction_in_order(connect: Any) -> None:
    client = await connect()
    a, b, c = player("batch-a"), player("batch-b"), player("batch-c")
    results = await client.execute_batch(
        [
            Transaction(a).increment("n", 1, "public"),
            Transaction(b).check_version(5).increment("n", 1, "public"),
            Transaction(c).increment("n", 3, "public").read("n"),
        ]
    )
    assert isinstance(results[0], Committed) and results[0].version == 1
    assert isinstance(results[1], ColonyError) and results[1].code == Code.CONFLICT
    assert isinstance(results[2], Committed) and results[2].counter("n") == 3


async def test_hundreds_of_requests_in_flight_on_one_connection_are_each_answered(connect: Any) -> None:
    client = await connect()
    session = await client.session()
    players = [player(f"pipe-{i}") for i in range(20)]
    per_player = -(-(session.max_in_flight + 100) // len(players))
    count = per_player * len(players)
    answers = await asyncio.gather(
        *(client.execute(Transaction(players[i % len(players)]).increment("n", 1, "public").read("n")) for i in range(count))
    )
    for p in players:
        read = await client.get_player(p)
        assert (read.counter("n"), read.version) == (per_player, per_player)
    # Each caller got its own answer: one player's versions are 1..n, each once.
    versions = sorted(a.version for i, a in enumerate(answers) if i % len(players) == 0)
    assert versions == list(range(1, per_player + 1))


async def test_a_trade_moves_gold_between_players_all_or_nothing(connect: Any) -> None:
    game = await connect(token=GAME_TOKEN)
    seller, buyer = player("seller"), player("buyer")
    for p in (seller, buyer):
        await game.execute(Transaction(p).acting_for(p).increment("gold", 50, "private").set("sword", "no", "public"))

    def trade(gold: int) -> MultiTransaction:
        return (
            MultiTransaction()
            .acting_for(buyer)
            .participant(buyer, lambda p: p.increment("gold", -gold, "private", min=0).set("sword", "yes", "public"))
            .participant(seller, lambda p: p.increment("gold", gold, "private").set("sword", "no", "public"), "public")
        )

    done = await game.execute_multi(trade(30))
    assert [p.version for p in done.participants] == [2, 2]
    failed = await refused(game.execute_multi(trade(30)), Code.OUT_OF_BOUNDS)
    assert failed.failed_participant == 0
    admin = await connect()
    assert (await admin.get_player(buyer)).counter("gold") == 20
    assert (await admin.get_player(seller)).counter("gold") == 80
    mixed = await game.execute_items([Transaction(seller, "public").acting_for(buyer).read("sword"), trade(10)])
    assert isinstance(mixed[0], Committed) and isinstance(mixed[1], MultiCommitted)
    await refused(
        game.execute_multi(MultiTransaction().participant(buyer, lambda p: p.read()).participant(buyer, lambda p: p.read())),
        Code.FORBIDDEN,
    )


async def test_a_write_whose_answer_is_lost_is_retried_with_its_key_and_applies_once(connect: Any) -> None:
    async with proxied() as (proxy, address):
        client = await connect(address=address, request_deadline=10.0)
        erin = player("erin")
        await client.execute(Transaction(erin).increment("gold", 1, "public"))
        # The next request reaches the gateway, which applies and answers it; the answer is
        # thrown away and the connection breaks: the client must send it again, unchanged, on a
        # new connection.
        proxy.swallow_answers = True

        def break_after_answer() -> None:
            proxy.on_swallowed = None
            proxy.swallow_answers = False
            proxy.drop_all()

        proxy.on_swallowed = break_after_answer
        retried = await client.execute(Transaction(erin).increment("gold", 10, "public").read("gold"))
        assert retried.replayed, "the retry found the first attempt applied"
        assert retried.counter("gold") == 11
        assert (await client.get_player(erin)).version == 2


async def test_an_outcome_once_unknown_stays_unknown_when_retries_are_not_answered(connect: Any) -> None:
    async with proxied() as (proxy, address):
        client = await connect(address=address, request_deadline=0.6)
        fay = player("fay")
        proxy.swallow_answers = True
        loop = asyncio.get_running_loop()

        def break_after_request() -> None:
            proxy.on_request = None
            loop.call_later(0.05, proxy.drop_all)

        proxy.on_request = break_after_request
        lost = await refused(client.execute(Transaction(fay).increment("gold", 1, "public")), Code.UNKNOWN)
        assert lost.may_have_applied
        # A read whose answer is lost applied nothing: it is merely unavailable.
        (read,) = await client.execute_batch([Transaction(fay, "public").read("gold")])
        assert isinstance(read, ColonyError) and read.code in (Code.UNAVAILABLE, Code.TIMEOUT)


async def test_a_closed_client_fails_at_once_without_connecting_again() -> None:
    client = await Client.connect(GATEWAY, ADMIN_TOKEN)
    client.close()
    started = time.monotonic()
    await refused(client.execute(Transaction(player("gone")).increment("n", 1, "public")), Code.UNAVAILABLE)
    await refused(client.get_player(player("gone")), Code.UNAVAILABLE)
    assert time.monotonic() - started < 1.0, "refused at once, not retried until the deadline"


async def test_over_tls_the_client_checks_the_certificate_and_works_as_over_tcp(connect: Any) -> None:
    # A self-signed certificate for "localhost", and a proxy that ends TLS in front of the gateway.
    with tempfile.TemporaryDirectory() as d:
        key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost"],
            check=True, capture_output=True,
        )
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
        with open(cert, encoding="ascii") as f:
            pem = f.read()
    async with proxied(tls=server) as (proxy, address):
        client = await connect(address=address, tls_ca=pem, tls_server_name="localhost")
        gus = player("gus")
        assert (await client.execute(Transaction(gus).increment("n", 2, "public").read("n"))).counter("n") == 2
        # A certificate the client does not trust, or a name it does not carry: no connection.
        await refused(Client.connect(address, ADMIN_TOKEN, tls=True), Code.UNAVAILABLE)
        await refused(
            Client.connect(address, ADMIN_TOKEN, tls_ca=pem, tls_server_name="gateway.example"), Code.UNAVAILABLE
        )
