// The builders: what they refuse locally, and what they record.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MultiTransaction, Transaction } from "../../src/transaction.js";

test("integers that are not safe are refused before anything is sent", () => {
  assert.throws(() => new Transaction("p").increment("gold", 2 ** 53, "public"), RangeError);
  assert.throws(() => new Transaction("p").increment("gold", 1.5, "public"), RangeError);
  assert.throws(() => new Transaction("p").checkVersion(Number.NaN), RangeError);
});

test("a transaction that only reads and checks does not write", () => {
  const read = new Transaction("p", "public").read("a").checkVersion(3).checkField("f", null);
  assert.equal(read.writes, false);
  assert.equal(read.toProto().idempotencyKey, undefined);
  const write = new Transaction("p").deleteCounter("c");
  assert.equal(write.writes, true);
  assert.equal(write.toProto({ clientId: "c", requestId: 5n }).idempotencyKey?.requestId, 5n);
  assert.equal(
    write.withKey({ clientId: "own", requestId: 9n }).toProto({ clientId: "c", requestId: 5n }).idempotencyKey?.clientId,
    "own",
  );
});

test("a multi-player transaction keeps its participants in order", () => {
  const m = new MultiTransaction()
    .participant("a", (p) => p.increment("g", -1, "private"))
    .participant("b", (p) => p.read(), "public");
  const proto = m.toProto({ clientId: "c", requestId: 1n });
  assert.deepEqual(proto.participants.map((p) => p.playerId), ["a", "b"]);
  assert.equal(proto.participants[1]!.access, 2);
  assert.equal(proto.actingPlayerId, "");
});
