"""The builders: what they refuse locally, and what they record."""

from __future__ import annotations

import pytest

from colony_client import IdempotencyKey, MultiTransaction, Transaction


def test_values_of_the_wrong_type_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(TypeError):
        Transaction("p").increment("gold", 1.5, "public")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Transaction("p").check_version(True)
    with pytest.raises(ValueError):
        Transaction("p").set("a", "b", "secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Transaction("p").increment("gold", 2**64, "public")


def test_a_transaction_that_only_reads_and_checks_does_not_write() -> None:
    read = Transaction("p", "public").read("a").check_version(3).check_field("f", None)
    assert not read.writes
    assert not read.to_proto().HasField("idempotency_key")
    write = Transaction("p").delete_counter("c")
    assert write.writes
    assert write.to_proto(IdempotencyKey("c", 5)).idempotency_key.request_id == 5
    own = write.with_key(IdempotencyKey("own", 9)).to_proto(IdempotencyKey("c", 5))
    assert own.idempotency_key.client_id == "own"


def test_a_multi_player_transaction_keeps_its_participants_in_order() -> None:
    m = (
        MultiTransaction()
        .participant("a", lambda p: p.increment("g", -1, "private"))
        .participant("b", lambda p: p.read(), "public")
    )
    proto = m.to_proto(IdempotencyKey("c", 1))
    assert [p.player_id for p in proto.participants] == ["a", "b"]
    assert proto.participants[1].access == 2
    assert proto.acting_player_id == ""
