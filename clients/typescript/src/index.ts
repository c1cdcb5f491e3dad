/**
 * Colony's TypeScript client: talks to a Colony gateway over its protobuf/TCP protocol
 * (proto/PROTOCOL.md), with the protocol's retry rules built in.
 */
export { Client, PROTOCOL_VERSION, type ClientOptions, type ItemOutcome, type Session } from "./client.js";
export { ColonyError, Code, afterAttempts, codeName, mayHaveApplied, retryClassOf, type Outcome, type RetryClass } from "./errors.js";
export { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameTooLargeError, encodeFrame } from "./framing.js";
export { Committed, MultiCommitted, type Entry, type Read } from "./results.js";
export {
  MultiTransaction,
  Operations,
  Participant,
  Transaction,
  type AccessName,
  type Bounds,
  type IdempotencyKey,
  type VisibilityName,
} from "./transaction.js";
/** The generated protobuf types and schemas of package colony.v1. */
export * as proto from "./gen/colony/v1/colony_pb.js";
