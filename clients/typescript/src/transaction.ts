/**
 * Builders for transactions on one player and across players, and their protobuf form.
 *
 *     const buy = new Transaction("alice").actingFor("alice")
 *       .increment("gold", -30, "private", { min: 0 })
 *       .set("sword", "iron", "public")
 *       .read("gold");
 *
 * Visibility is always stated on writes: writing a name with the other visibility moves it,
 * so a default could silently publish or hide an entry.
 */
import { create } from "@bufbuild/protobuf";
import {
  Access,
  IdempotencyKeySchema,
  MultiTransactionSchema,
  OperationSchema,
  ParticipantSchema,
  TransactionSchema,
  Visibility,
  type IdempotencyKey as IdempotencyKeyMessage,
  type MultiTransaction as MultiTransactionMessage,
  type Operation,
  type Transaction as TransactionMessage,
} from "./gen/colony/v1/colony_pb.js";

/** Who may see an entry. */
export type VisibilityName = "public" | "private";
/** On whose behalf a transaction (or a participant's part) reads: everything, or public entries. */
export type AccessName = "owner" | "public";

/** Identifies one logical write so a retry applies at most once (PROTOCOL.md, "Idempotency"). */
export interface IdempotencyKey {
  clientId: string;
  requestId: bigint;
}

/** Bounds an increment's result must stay within. */
export interface Bounds {
  min?: number | bigint;
  max?: number | bigint;
}

const encoder = new TextEncoder();

function bytes(value: string | Uint8Array): Uint8Array {
  return typeof value === "string" ? encoder.encode(value) : value;
}

function integer(value: number | bigint, what: string): bigint {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new RangeError(`${what} must be a safe integer, not ${value}`);
  }
  return BigInt(value);
}

export function visibilityOf(name: VisibilityName): Visibility {
  return name === "public" ? Visibility.PUBLIC : Visibility.PRIVATE;
}

export function accessOf(name: AccessName): Access {
  return name === "owner" ? Access.OWNER : Access.PUBLIC;
}

export function keyToProto(key: IdempotencyKey): IdempotencyKeyMessage {
  return create(IdempotencyKeySchema, { clientId: key.clientId, requestId: key.requestId });
}

/** The operations of one player's part: reads, writes and checks, applied in order. */
export class Operations {
  protected readonly ops: Operation[] = [];
  private writing = false;

  /** Reads the named fields and counters, or every visible entry when no name is given. */
  read(...names: string[]): this {
    this.ops.push(create(OperationSchema, { op: { case: "read", value: { names } } }));
    return this;
  }

  /** Sets a field (a value of bytes; strings are sent as UTF-8). */
  set(name: string, value: string | Uint8Array, visibility: VisibilityName): this {
    this.writing = true;
    this.ops.push(
      create(OperationSchema, {
        op: { case: "setField", value: { name, value: bytes(value), visibility: visibilityOf(visibility) } },
      }),
    );
    return this;
  }

  /** Deletes a field (no error if absent). */
  deleteField(name: string): this {
    this.writing = true;
    this.ops.push(create(OperationSchema, { op: { case: "deleteField", value: { name } } }));
    return this;
  }

  /** Adds `delta` to a counter (absent counters are 0), failing OUT_OF_BOUNDS outside `bounds`. */
  increment(name: string, delta: number | bigint, visibility: VisibilityName, bounds: Bounds = {}): this {
    this.writing = true;
    const value: {
      name: string;
      delta: bigint;
      visibility: Visibility;
      min?: bigint;
      max?: bigint;
    } = { name, delta: integer(delta, "delta"), visibility: visibilityOf(visibility) };
    if (bounds.min !== undefined) value.min = integer(bounds.min, "min");
    if (bounds.max !== undefined) value.max = integer(bounds.max, "max");
    this.ops.push(create(OperationSchema, { op: { case: "incrementCounter", value } }));
    return this;
  }

  /** Deletes a counter (no error if absent). */
  deleteCounter(name: string): this {
    this.writing = true;
    this.ops.push(create(OperationSchema, { op: { case: "deleteCounter", value: { name } } }));
    return this;
  }

  /** Fails the whole transaction with CONFLICT unless the version is `expected` (0: no player). */
  checkVersion(expected: number | bigint): this {
    this.ops.push(
      create(OperationSchema, {
        op: { case: "checkVersion", value: { expected: integer(expected, "expected version") } },
      }),
    );
    return this;
  }

  /** Fails with CONFLICT unless the field equals `expected`, or is absent when `expected` is null. */
  checkField(name: string, expected: string | Uint8Array | null): this {
    const value: { name: string; expected?: Uint8Array } = { name };
    if (expected !== null) value.expected = bytes(expected);
    this.ops.push(create(OperationSchema, { op: { case: "checkField", value } }));
    return this;
  }

  /** True when an operation writes (then an idempotency key is needed). */
  get writes(): boolean {
    return this.writing;
  }

  /** The operations as built. */
  get operations(): readonly Operation[] {
    return this.ops;
  }
}

/** All-or-nothing operations on one player. */
export class Transaction extends Operations {
  private acting: string | undefined;
  private key: IdempotencyKey | undefined;

  /** `access`: `"owner"` (the player's own session) or `"public"` (reads of public entries). */
  constructor(
    readonly playerId: string,
    readonly access: AccessName = "owner",
  ) {
    super();
  }

  /** Through the game role: the player on whose behalf this runs. */
  actingFor(playerId: string): this {
    this.acting = playerId;
    return this;
  }

  /** Sets the idempotency key; without one the client takes its next key when it writes. */
  withKey(key: IdempotencyKey): this {
    this.key = key;
    return this;
  }

  /** The key set with `withKey`, if any. */
  get idempotencyKey(): IdempotencyKey | undefined {
    return this.key;
  }

  /** The protobuf message, with `key` when the transaction has none of its own. */
  toProto(key?: IdempotencyKey): TransactionMessage {
    const chosen = this.key ?? key;
    return create(TransactionSchema, {
      playerId: this.playerId,
      access: accessOf(this.access),
      operations: [...this.ops],
      actingPlayerId: this.acting ?? "",
      ...(chosen === undefined ? {} : { idempotencyKey: keyToProto(chosen) }),
    });
  }
}

/** One player's part of a multi-player transaction. */
export class Participant extends Operations {
  constructor(
    readonly playerId: string,
    readonly access: AccessName,
  ) {
    super();
  }
}

/**
 * All-or-nothing operations on several players (a trade, a gift), usually on different
 * shards. The first participant is the primary; the whole has one idempotency key.
 *
 *     const trade = new MultiTransaction().actingFor("alice")
 *       .participant("alice", (p) => p.increment("gold", -10, "private", { min: 0 }))
 *       .participant("bob", (p) => p.increment("gold", 10, "private"), "public");
 */
export class MultiTransaction {
  private readonly parts: Participant[] = [];
  private acting: string | undefined;
  private key: IdempotencyKey | undefined;

  /** Adds a participant; `access` decides what its reads and checks see (default owner). */
  participant(playerId: string, build: (p: Participant) => void, access: AccessName = "owner"): this {
    const part = new Participant(playerId, access);
    build(part);
    this.parts.push(part);
    return this;
  }

  /** Through the game role: the participant on whose behalf this runs. */
  actingFor(playerId: string): this {
    this.acting = playerId;
    return this;
  }

  /** Sets the idempotency key; without one the client takes its next key. */
  withKey(key: IdempotencyKey): this {
    this.key = key;
    return this;
  }

  get idempotencyKey(): IdempotencyKey | undefined {
    return this.key;
  }

  get participants(): readonly Participant[] {
    return this.parts;
  }

  toProto(key?: IdempotencyKey): MultiTransactionMessage {
    const chosen = this.key ?? key;
    return create(MultiTransactionSchema, {
      participants: this.parts.map((p) =>
        create(ParticipantSchema, {
          playerId: p.playerId,
          access: accessOf(p.access),
          operations: [...p.operations],
        }),
      ),
      actingPlayerId: this.acting ?? "",
      ...(chosen === undefined ? {} : { idempotencyKey: keyToProto(chosen) }),
    });
  }
}
