// What the client does with a gateway that answers badly: an oversized length, bytes that are
// not protobuf, an answer to no request. A stand-in server speaks the frames (this is the
// client's input path; the real gateway is tested in test/gateway/).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { ClientFrameSchema, Code, Role, ServerFrameSchema } from "../../src/gen/colony/v1/colony_pb.js";
import { fromBinary } from "@bufbuild/protobuf";
import { encodeFrame, FrameDecoder } from "../../src/framing.js";
import { Client, ColonyError, Transaction } from "../../src/index.js";

type Reply = (requestId: bigint, socket: net.Socket, request: Uint8Array) => void;

/** A server that accepts the Hello, then answers each request with `reply`. */
async function standIn(reply: Reply): Promise<{ address: string; connections: () => number; close: () => void }> {
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections += 1;
    sockets.add(socket);
    socket.on("error", () => {});
    const decoder = new FrameDecoder();
    let hello = true;
    socket.on("data", (chunk) => {
      for (const message of decoder.push(chunk)) {
        // The request id is field 1, a varint: enough of the frame to answer it.
        const requestId = message[0] === 0x08 ? readVarint(message, 1) : 0n;
        if (hello) {
          hello = false;
          const answer = create(ServerFrameSchema, {
            requestId,
            body: { case: "hello", value: { role: Role.ADMIN, maxFrameBytes: 1 << 20, maxInFlight: 8, maxTransactionsPerBatch: 16 } },
          });
          socket.write(encodeFrame(toBinary(ServerFrameSchema, answer)));
        } else {
          reply(requestId, socket, message);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    address: `127.0.0.1:${port}`,
    connections: () => connections,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

function readVarint(bytes: Uint8Array, at: number): bigint {
  let value = 0n;
  for (let shift = 0n; at < bytes.length; shift += 7n, at++) {
    const byte = bytes[at]!;
    value |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) break;
  }
  return value;
}

const write = () => new Transaction("p").increment("gold", 1, "public");
const options = (address: string) => ({ address, token: "t", requestDeadlineMs: 400, backoffBaseMs: 5, backoffMaxMs: 20 });

async function failsWith(promise: Promise<unknown>, codes: Code[]): Promise<void> {
  await assert.rejects(promise, (e: unknown) => e instanceof ColonyError && codes.includes(e.code));
}

test("a claimed length over the limit ends the connection, and the write is UNKNOWN", async () => {
  const server = await standIn((_, socket) => socket.write(Buffer.from([0x7f, 0xff, 0xff, 0xff])));
  try {
    const client = await Client.connect(options(server.address));
    await failsWith(client.execute(write()), [Code.UNKNOWN]);
    // It tried again on new connections, with the same key, until the deadline.
    assert.ok(server.connections() >= 2, `${server.connections()} connections`);
    client.close();
  } finally {
    server.close();
  }
});

test("bytes that are not protobuf end the connection; a read is UNAVAILABLE, not UNKNOWN", async () => {
  const server = await standIn((_, socket) => socket.write(encodeFrame(new Uint8Array([0x0f, 0xff, 0xff]))));
  try {
    const client = await Client.connect(options(server.address));
    await failsWith(client.getPlayer("p"), [Code.UNAVAILABLE]);
    await failsWith(client.execute(write()), [Code.UNKNOWN]);
    client.close();
  } finally {
    server.close();
  }
});

test("an answer to no request is ignored, and the right one still arrives", async () => {
  const server = await standIn((requestId, socket) => {
    const stray = (id: bigint) =>
      encodeFrame(toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: id, body: { case: "error", value: { code: Code.INVALID, message: "stray" } } })));
    socket.write(stray(requestId + 1000n));
    socket.write(
      encodeFrame(
        toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId, body: { case: "batch", value: { results: [{ version: 1n }] } } })),
      ),
    );
  });
  try {
    const client = await Client.connect(options(server.address));
    const done = await client.execute(write());
    assert.equal(done.version, 1n);
    assert.equal(server.connections(), 1);
    client.close();
  } finally {
    server.close();
  }
});

test("a batch answered with the wrong number of results is INTERNAL, never a shifted result", async () => {
  const server = await standIn((requestId, socket) =>
    socket.write(
      encodeFrame(
        toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId, body: { case: "batch", value: { results: [] } } })),
      ),
    ),
  );
  try {
    const client = await Client.connect(options(server.address));
    await failsWith(client.execute(write()), [Code.INTERNAL]);
    client.close();
  } finally {
    server.close();
  }
});

test("a request over the announced frame limit is refused before it is sent", async () => {
  const server = await standIn(() => assert.fail("nothing may be sent"));
  try {
    const client = await Client.connect(options(server.address));
    await failsWith(client.execute(new Transaction("p").set("big", new Uint8Array(2 << 20), "public")), [Code.TOO_LARGE]);
    client.close();
  } finally {
    server.close();
  }
});

test("answers in any order reach their own callers", async () => {
  // Holds three requests, then answers them last first, each with a version taken from its
  // own player id ("p-7" gets version 7).
  const held: [bigint, Uint8Array][] = [];
  const server = await standIn((requestId, socket, request) => {
    held.push([requestId, request]);
    if (held.length < 3) return;
    for (const [id, bytes] of held.reverse()) {
      const frame = fromBinary(ClientFrameSchema, bytes);
      const player = frame.body.case === "batch" ? frame.body.value.transactions[0]?.playerId ?? "" : "";
      const version = BigInt(player.split("-")[1] ?? "0");
      socket.write(
        encodeFrame(
          toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: id, body: { case: "batch", value: { results: [{ version }] } } })),
        ),
      );
    }
  });
  try {
    const client = await Client.connect(options(server.address));
    const answers = await Promise.all([5, 6, 7].map((n) => client.execute(new Transaction(`p-${n}`).increment("g", 1, "public"))));
    assert.deepEqual(answers.map((a) => a.version), [5n, 6n, 7n]);
    client.close();
  } finally {
    server.close();
  }
});
