"""The shared test vectors (proto/testdata/vectors.json): this client must encode and decode
every frame exactly as the Rust side and the TypeScript client do."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from colony_client import Code, ColonyError, FrameDecoder, MultiTransaction, Transaction, encode_frame
from colony_client import may_have_applied, retry_class
from colony_client._gen.colony.v1 import colony_pb2 as pb
from colony_client.results import committed_of, multi_committed_of

from conftest import ROOT

import json

with open(ROOT / "proto" / "testdata" / "vectors.json", encoding="utf-8") as _f:
    _VECTORS: Dict[str, Any] = json.load(_f)
FRAMES: List[Dict[str, Any]] = _VECTORS["client_frames"] + _VECTORS["server_frames"]


def _schema(message: str) -> type[Message]:
    return pb.ClientFrame if message == "colony.v1.ClientFrame" else pb.ServerFrame


def _named(name: str) -> Dict[str, Any]:
    return next(v for v in FRAMES if v["name"] == name)


def _message(name: str) -> bytes:
    return bytes.fromhex(_named(name)["frame"])[4:]


@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_bytes_decode_to_the_json_and_the_json_encodes_to_the_bytes(vector: Dict[str, Any]) -> None:
    schema = _schema(vector["message"])
    frame = bytes.fromhex(vector["frame"])
    messages = FrameDecoder().push(frame)
    assert len(messages) == 1
    decoded = schema.FromString(messages[0])
    assert json_format.MessageToDict(decoded) == vector["json"]
    encoded = json_format.ParseDict(vector["json"], schema()).SerializeToString(deterministic=True)
    assert encode_frame(encoded).hex() == vector["frame"]


@pytest.mark.parametrize("vector", _VECTORS["malformed"], ids=[v["name"] for v in _VECTORS["malformed"]])
def test_malformed_messages_are_refused(vector: Dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        pb.ServerFrame.FromString(bytes.fromhex(vector["hex"]))


def test_every_code_has_the_number_and_retry_class_of_the_table(vectors: Dict[str, Any]) -> None:
    assert len(vectors["codes"]) == len(Code) == len(pb.Code.keys())
    for entry in vectors["codes"]:
        code = Code[entry["code"].removeprefix("CODE_")]
        assert code == entry["number"] == pb.Code.Value(entry["code"])
        assert retry_class(code) == entry["retry"]
        assert may_have_applied(code) == entry["may_have_applied"]
        if code != Code.OK:
            error = ColonyError(code, "vector")
            assert error.retryable == (entry["retry"] == "same_request")
            assert error.may_have_applied == entry["may_have_applied"]


def test_a_code_from_a_newer_gateway_reads_as_internal() -> None:
    assert Code.of(99) == Code.INTERNAL
    with pytest.raises(ColonyError) as newer:
        committed_of(pb.TransactionResult(code=99, message="newer"))  # type: ignore[arg-type]
    assert newer.value.code == Code.INTERNAL and newer.value.may_have_applied and not newer.value.retryable


def test_the_builder_makes_the_bytes_of_batch_every_operation() -> None:
    from colony_client import IdempotencyKey

    t = (
        Transaction("player-1")
        .acting_for("player-1")
        .with_key(IdempotencyKey("3f2b9c1e-client", 1))
        .read()
        .read("gold", "title")
        .set("title", "Dragon slayer", "public")
        .set("note", b"", "private")
        .delete_field("old.title")
        .increment("gold", -5, "private", min=0, max=2**53 - 1)
        .increment("xp", 2**53 - 1, "public")
        .increment("debt", -1, "private", min=-(2**53 - 1))
        .increment("zero", 0, "public", min=0, max=0)
        .delete_counter("old_gold")
        .check_version(0)
        .check_version(12)
        .check_field("title", bytes([0, 255, 10]))
        .check_field("absent_field", None)
        .check_field("empty_field", "")
    )
    frame = pb.ClientFrame(request_id=4, batch=pb.Batch(transactions=[t.to_proto()]))
    assert encode_frame(frame.SerializeToString()).hex() == _named("batch_every_operation")["frame"]


def test_the_builders_make_the_bytes_of_batch_items_mixed() -> None:
    from colony_client import IdempotencyKey

    single = Transaction("carol").acting_for("carol").with_key(IdempotencyKey("c1", 10)).set("mood", "ok", "public")
    trade = (
        MultiTransaction()
        .with_key(IdempotencyKey("c1", 11))
        .acting_for("alice")
        .participant("alice", lambda p: p.increment("gold", -10, "private", min=0).set("sword", "1", "public"))
        .participant("bob", lambda p: p.increment("gold", 10, "private").delete_field("sword"), "public")
    )
    frame = pb.ClientFrame(
        request_id=6,
        batch=pb.Batch(items=[pb.BatchItem(transaction=single.to_proto()), pb.BatchItem(multi=trade.to_proto())]),
    )
    assert encode_frame(frame.SerializeToString()).hex() == _named("batch_items_mixed")["frame"]


def test_results_read_as_the_vectors_mean_them() -> None:
    player = committed_of(pb.ServerFrame.FromString(_message("player_found")).player)
    assert player.version == 12
    assert player.counter("gold") == -3
    assert player.counter("level") == 0
    assert player.text("title") == "Dragon slayer"
    assert player.counter("title") == 2**53 - 1
    assert player.field("void") == b""
    assert player.field("absent") is None

    with pytest.raises(ColonyError) as missing:
        committed_of(pb.ServerFrame.FromString(_message("player_not_found")).player)
    assert missing.value.code == Code.NOT_FOUND

    ok, replay, conflict, unknown = pb.ServerFrame.FromString(_message("batch_result")).batch.results
    assert committed_of(ok).counter("gold") == 95
    assert committed_of(replay).replayed
    with pytest.raises(ColonyError) as failed:
        committed_of(conflict)
    assert (failed.value.code, failed.value.version, failed.value.failed_operation) == (Code.CONFLICT, 12, 3)
    assert failed.value.retry == "after_reread"
    with pytest.raises(ColonyError) as lost:
        committed_of(unknown)
    assert lost.value.code == Code.UNKNOWN and lost.value.may_have_applied

    items = pb.ServerFrame.FromString(_message("batch_items_result")).batch.items
    trade = multi_committed_of(items[1].multi)
    assert [p.version for p in trade.participants] == [8, 3]
    assert trade.participants[1].counter("gold") == 10
    with pytest.raises(ColonyError) as refused:
        multi_committed_of(items[2].multi)
    assert (refused.value.code, refused.value.failed_participant, refused.value.version) == (Code.OUT_OF_BOUNDS, 0, 7)
    assert refused.value.failed_operation == 0
    with pytest.raises(ColonyError) as locked:
        multi_committed_of(items[3].multi)
    assert locked.value.retryable and locked.value.failed_participant is None
    assert multi_committed_of(items[4].multi).replayed
