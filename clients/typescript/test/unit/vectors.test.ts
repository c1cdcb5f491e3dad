// The shared test vectors (proto/testdata/vectors.json): this client must encode and decode
// every frame exactly as the Rust side and the Python client do.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { create, fromBinary, fromJson, toBinary, toJson, type JsonValue } from "@bufbuild/protobuf";
import {
  BatchSchema,
  ClientFrameSchema,
  Code,
  ServerFrameSchema,
} from "../../src/gen/colony/v1/colony_pb.js";
import { encodeFrame, FrameDecoder } from "../../src/framing.js";
import { mayHaveApplied, retryClassOf, ColonyError } from "../../src/errors.js";
import { committedOf, multiCommittedOf } from "../../src/results.js";
import { MultiTransaction, Transaction } from "../../src/transaction.js";

interface FrameVector {
  name: string;
  message: string;
  json: JsonValue;
  frame: string;
}
interface Vectors {
  client_frames: FrameVector[];
  server_frames: FrameVector[];
  malformed: { name: string; message: string; hex: string }[];
  codes: { code: string; number: number; retry: string; may_have_applied: boolean }[];
}

const vectors = JSON.parse(
  readFileSync(new URL("../../../../../proto/testdata/vectors.json", import.meta.url), "utf8"),
) as Vectors;

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");
const unhex = (text: string) => new Uint8Array(Buffer.from(text, "hex"));
const schemaOf = (message: string) => (message === "colony.v1.ClientFrame" ? ClientFrameSchema : ServerFrameSchema);
const frameNamed = (name: string) => {
  const found = [...vectors.client_frames, ...vectors.server_frames].find((v) => v.name === name);
  assert.ok(found, `no vector ${name}`);
  return found;
};
const messageOf = (name: string) => unhex(frameNamed(name).frame).subarray(4);

test("the vectors are there", () => {
  assert.ok(vectors.client_frames.length >= 5);
  assert.ok(vectors.server_frames.length >= 20);
  assert.ok(vectors.malformed.length >= 3);
  assert.equal(vectors.codes.length, 16);
});

for (const vector of [...vectors.client_frames, ...vectors.server_frames]) {
  test(`vector ${vector.name}: bytes decode to its JSON and its JSON encodes to the bytes`, () => {
    const schema = schemaOf(vector.message);
    const frame = unhex(vector.frame);
    const [message, ...rest] = new FrameDecoder().push(frame);
    assert.ok(message !== undefined && rest.length === 0, "one whole frame");
    assert.deepEqual(toJson(schema, fromBinary(schema, message)), vector.json);
    assert.equal(hex(encodeFrame(toBinary(schema, fromJson(schema, vector.json)))), vector.frame);
  });
}

for (const vector of vectors.malformed) {
  test(`malformed ${vector.name} is refused`, () => {
    assert.throws(() => fromBinary(ServerFrameSchema, unhex(vector.hex)));
  });
}

test("every code has the number and retry class of the table", () => {
  for (const entry of vectors.codes) {
    const code = Code[entry.code.replace(/^CODE_/, "") as keyof typeof Code];
    assert.equal(code, entry.number, entry.code);
    assert.equal(retryClassOf(code), entry.retry, entry.code);
    assert.equal(mayHaveApplied(code), entry.may_have_applied, entry.code);
    if (code !== Code.OK) {
      const error = new ColonyError(code, "vector");
      assert.equal(error.retryable, entry.retry === "same_request", entry.code);
      assert.equal(error.mayHaveApplied, entry.may_have_applied, entry.code);
    }
  }
});

test("a code from a newer gateway is final and may have applied, like INTERNAL", () => {
  const newer = 99 as Code;
  assert.equal(retryClassOf(newer), "never");
  assert.equal(mayHaveApplied(newer), true);
  assert.equal(new ColonyError(newer, "newer").codeName, "CODE_99");
});

test("the builder makes the bytes of batch_every_operation", () => {
  const t = new Transaction("player-1")
    .actingFor("player-1")
    .withKey({ clientId: "3f2b9c1e-client", requestId: 1n })
    .read()
    .read("gold", "title")
    .set("title", "Dragon slayer", "public")
    .set("note", new Uint8Array(), "private")
    .deleteField("old.title")
    .increment("gold", -5, "private", { min: 0, max: Number.MAX_SAFE_INTEGER })
    .increment("xp", Number.MAX_SAFE_INTEGER, "public")
    .increment("debt", -1n, "private", { min: -Number.MAX_SAFE_INTEGER })
    .increment("zero", 0, "public", { min: 0, max: 0 })
    .deleteCounter("old_gold")
    .checkVersion(0)
    .checkVersion(12n)
    .checkField("title", new Uint8Array([0, 255, 10]))
    .checkField("absent_field", null)
    .checkField("empty_field", "");
  const frame = create(ClientFrameSchema, {
    requestId: 4n,
    body: { case: "batch", value: create(BatchSchema, { transactions: [t.toProto()] }) },
  });
  assert.equal(hex(encodeFrame(toBinary(ClientFrameSchema, frame))), frameNamed("batch_every_operation").frame);
});

test("the builders make the bytes of batch_items_mixed", () => {
  const single = new Transaction("carol")
    .actingFor("carol")
    .withKey({ clientId: "c1", requestId: 10n })
    .set("mood", "ok", "public");
  const trade = new MultiTransaction()
    .withKey({ clientId: "c1", requestId: 11n })
    .actingFor("alice")
    .participant("alice", (p) => p.increment("gold", -10, "private", { min: 0 }).set("sword", "1", "public"))
    .participant("bob", (p) => p.increment("gold", 10, "private").deleteField("sword"), "public");
  const frame = create(ClientFrameSchema, {
    requestId: 6n,
    body: {
      case: "batch",
      value: create(BatchSchema, {
        items: [
          { item: { case: "transaction", value: single.toProto() } },
          { item: { case: "multi", value: trade.toProto() } },
        ],
      }),
    },
  });
  assert.equal(hex(encodeFrame(toBinary(ClientFrameSchema, frame))), frameNamed("batch_items_mixed").frame);
});

test("results read as the vectors mean them", () => {
  const found = fromBinary(ServerFrameSchema, messageOf("player_found"));
  assert.equal(found.body.case, "player");
  if (found.body.case !== "player") return;
  const player = committedOf(found.body.value);
  assert.equal(player.version, 12n);
  assert.equal(player.counter("gold"), -3);
  assert.equal(player.counter("level"), 0);
  assert.equal(player.text("title"), "Dragon slayer");
  assert.equal(player.counter("title"), Number.MAX_SAFE_INTEGER);
  assert.deepEqual(player.field("void"), new Uint8Array());
  assert.equal(player.field("absent"), undefined);

  const missing = fromBinary(ServerFrameSchema, messageOf("player_not_found"));
  if (missing.body.case !== "player") assert.fail("a player answer");
  const notFound = missing.body.value;
  assert.throws(() => committedOf(notFound), (e: ColonyError) => e.code === Code.NOT_FOUND);

  const batch = fromBinary(ServerFrameSchema, messageOf("batch_result"));
  if (batch.body.case !== "batch") assert.fail("a batch answer");
  const [ok, replay, conflict, unknown] = batch.body.value.results;
  assert.equal(committedOf(ok!).counter("gold"), 95);
  assert.equal(committedOf(replay!).replayed, true);
  assert.throws(
    () => committedOf(conflict!),
    (e: ColonyError) => e.code === Code.CONFLICT && e.version === 12n && e.failedOperation === 3 && e.retry === "after_reread",
  );
  assert.throws(() => committedOf(unknown!), (e: ColonyError) => e.code === Code.UNKNOWN && e.mayHaveApplied);

  const items = fromBinary(ServerFrameSchema, messageOf("batch_items_result"));
  if (items.body.case !== "batch") assert.fail("a batch answer");
  const [, trade, refused, locked, replayed] = items.body.value.items.map((i) => i.item);
  if (trade?.case !== "multi" || refused?.case !== "multi" || locked?.case !== "multi" || replayed?.case !== "multi") {
    assert.fail("multi results");
  }
  const committed = multiCommittedOf(trade.value);
  assert.deepEqual(committed.participants.map((p) => p.version), [8n, 3n]);
  assert.equal(committed.participants[1]!.counter("gold"), 10);
  assert.throws(
    () => multiCommittedOf(refused.value),
    (e: ColonyError) => e.code === Code.OUT_OF_BOUNDS && e.failedParticipant === 0 && e.version === 7n && e.failedOperation === 0,
  );
  assert.throws(() => multiCommittedOf(locked.value), (e: ColonyError) => e.retryable && e.failedParticipant === undefined);
  assert.equal(multiCommittedOf(replayed.value).replayed, true);
});
