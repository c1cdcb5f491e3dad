// Frames cut from a byte stream however it arrives; an oversized length refused at once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeFrame, FrameDecoder, FrameTooLargeError } from "../../src/framing.js";

test("frames arriving a byte at a time come out whole and in order", () => {
  const messages = [new Uint8Array([1, 2, 3]), new Uint8Array(), new Uint8Array(300).fill(7)];
  const stream = Buffer.concat(messages.map((m) => encodeFrame(m)));
  const decoder = new FrameDecoder();
  const out: Uint8Array[] = [];
  for (const byte of stream) out.push(...decoder.push(new Uint8Array([byte])));
  assert.deepEqual(out, messages);
  assert.equal(decoder.pendingBytes, 0);
});

test("several frames in one chunk, and one split across chunks", () => {
  const a = encodeFrame(new Uint8Array([9]));
  const b = encodeFrame(new Uint8Array([8, 8]));
  const decoder = new FrameDecoder();
  const joined = new Uint8Array(Buffer.concat([a, b]));
  assert.deepEqual(decoder.push(joined.subarray(0, 7)), [new Uint8Array([9])]);
  assert.deepEqual(decoder.push(joined.subarray(7)), [new Uint8Array([8, 8])]);
});

test("a claimed length over the limit is refused before its bytes arrive", () => {
  const decoder = new FrameDecoder(1024);
  const head = new Uint8Array(4);
  new DataView(head.buffer).setUint32(0, 1025, false);
  assert.throws(() => decoder.push(head), (e: unknown) => e instanceof FrameTooLargeError && e.length === 1025);
  assert.deepEqual(new FrameDecoder(1024).push(encodeFrame(new Uint8Array(1024))).length, 1);
});
