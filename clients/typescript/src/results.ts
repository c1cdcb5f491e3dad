/** Typed results: what a committed transaction, a player read or a trade returned. */
import {
  Code,
  Visibility,
  type Entry as EntryMessage,
  type MultiTransactionResult,
  type ReadResult as ReadResultMessage,
  type TransactionResult,
} from "./gen/colony/v1/colony_pb.js";
import { ColonyError } from "./errors.js";
import type { VisibilityName } from "./transaction.js";

/** One field or counter as read. Counters fit a JS number: the protocol bounds them to ±(2^53 − 1). */
export type Entry =
  | { kind: "field"; name: string; visibility: VisibilityName; value: Uint8Array }
  | { kind: "counter"; name: string; visibility: VisibilityName; value: number };

/** What one ReadFields operation returned. */
export interface Read {
  /** Index of the ReadFields operation in its transaction, from 0. */
  operationIndex: number;
  entries: Entry[];
}

const decoder = new TextDecoder();

function entryOf(e: EntryMessage): Entry {
  const visibility: VisibilityName = e.visibility === Visibility.PRIVATE ? "private" : "public";
  if (e.value.case === "counter") {
    return { kind: "counter", name: e.name, visibility, value: Number(e.value.value) };
  }
  return { kind: "field", name: e.name, visibility, value: e.value.value ?? new Uint8Array() };
}

function readsOf(reads: ReadResultMessage[]): Read[] {
  return reads.map((r) => ({ operationIndex: r.operationIndex, entries: r.entries.map(entryOf) }));
}

/** A committed (or read) transaction on one player. */
export class Committed {
  constructor(
    /** The player's version after the transaction. */
    readonly version: bigint,
    readonly reads: Read[],
    /** True when this is the stored first result of an already applied request. */
    readonly replayed: boolean,
  ) {}

  /** Every entry of every read, in order. */
  get entries(): Entry[] {
    return this.reads.flatMap((r) => r.entries);
  }

  /** A field's value as read (the last read that returned it), or undefined. */
  field(name: string): Uint8Array | undefined {
    const found = this.entries.filter((e) => e.kind === "field" && e.name === name).pop();
    return found?.kind === "field" ? found.value : undefined;
  }

  /** A field's value as UTF-8 text, or undefined. */
  text(name: string): string | undefined {
    const value = this.field(name);
    return value === undefined ? undefined : decoder.decode(value);
  }

  /** A counter's value as read, or undefined. */
  counter(name: string): number | undefined {
    const found = this.entries.filter((e) => e.kind === "counter" && e.name === name).pop();
    return found?.kind === "counter" ? found.value : undefined;
  }
}

/** A committed multi-player transaction: one result per participant, in order. */
export class MultiCommitted {
  constructor(
    readonly participants: Committed[],
    readonly replayed: boolean,
  ) {}
}

/** A TransactionResult as a value, or the error it carries. */
export function committedOf(r: TransactionResult): Committed {
  if (r.code !== Code.OK) {
    throw new ColonyError(r.code, r.message || "failed", {
      version: r.version,
      failedOperation: r.failedOperation,
    });
  }
  return new Committed(r.version, readsOf(r.reads), r.replayed);
}

/** A MultiTransactionResult as a value, or the error it carries. */
export function multiCommittedOf(r: MultiTransactionResult): MultiCommitted {
  if (r.code !== Code.OK) {
    const named = r.failedParticipant > 0;
    throw new ColonyError(r.code, r.message || "failed", {
      ...(named
        ? { failedParticipant: r.failedParticipant - 1, version: r.version, failedOperation: r.failedOperation }
        : {}),
    });
  }
  return new MultiCommitted(
    r.participants.map((p) => new Committed(p.version, readsOf(p.reads), r.replayed)),
    r.replayed,
  );
}
