/**
 * Result codes as errors: what each means for a retry (proto/PROTOCOL.md, "Result codes and
 * retries"), and whether an answer with it may follow a write that applied.
 */
import { Code } from "./gen/colony/v1/colony_pb.js";

export { Code };

/** How a failed request may be retried. */
export type RetryClass =
  /** Sending the same request again cannot succeed. */
  | "never"
  /** Send the same request again, with the same idempotency key: it applies at most once. */
  | "same_request"
  /** The player changed: read it again and send a new transaction with a new request id. */
  | "after_reread";

/** The name of a code without its `CODE_` prefix, e.g. `"CONFLICT"`. */
export function codeName(code: Code): string {
  return Code[code] ?? `CODE_${code}`;
}

/** The retry class of a code; `"none"` for `Code.OK`. */
export function retryClassOf(code: Code): RetryClass | "none" {
  switch (code) {
    case Code.OK:
      return "none";
    case Code.CONFLICT:
      return "after_reread";
    case Code.UNAVAILABLE:
    case Code.TIMEOUT:
    case Code.UNKNOWN:
    case Code.LOCKED:
      return "same_request";
    default:
      return "never";
  }
}

/**
 * Whether an answer with this code may follow a write that applied: only OK, UNKNOWN and
 * INTERNAL (and a code this client does not know). Every other code means this attempt
 * applied nothing.
 */
export function mayHaveApplied(code: Code): boolean {
  // A code this client does not know (a newer gateway) counts as INTERNAL.
  return code === Code.OK || code === Code.UNKNOWN || code === Code.INTERNAL || Code[code] === undefined;
}

/** Where a refused transaction failed, when the answer says. */
export interface FailureDetail {
  /** The player's current version (CONFLICT, OUT_OF_BOUNDS, ...). */
  version?: bigint;
  /** Index of the failing operation, from 0. */
  failedOperation?: number;
  /** In a multi-player transaction: the failing participant's position, from 0. */
  failedParticipant?: number;
}

/** A request or transaction that did not succeed, with the gateway's code. */
export class ColonyError extends Error {
  override readonly name = "ColonyError";
  readonly version: bigint | undefined;
  readonly failedOperation: number | undefined;
  readonly failedParticipant: number | undefined;

  constructor(
    readonly code: Code,
    message: string,
    detail: FailureDetail = {},
  ) {
    super(`${codeName(code)}: ${message}`);
    this.version = detail.version;
    this.failedOperation = detail.failedOperation;
    this.failedParticipant = detail.failedParticipant;
  }

  /** The code's name without its prefix, e.g. `"CONFLICT"`. */
  get codeName(): string {
    return codeName(this.code);
  }

  /** How this failure may be retried. */
  get retry(): RetryClass {
    const retry = retryClassOf(this.code);
    return retry === "none" ? "never" : retry;
  }

  /** True when sending the very same request again may succeed. */
  get retryable(): boolean {
    return this.retry === "same_request";
  }

  /** True when the request may have applied although it failed (UNKNOWN, INTERNAL). */
  get mayHaveApplied(): boolean {
    return mayHaveApplied(this.code);
  }
}

/**
 * The outcome of a request over its attempts: once an attempt was sent without an answer
 * (UNKNOWN), a later one that was not sent or did not run (UNAVAILABLE, TIMEOUT, LOCKED) or
 * whose window could no longer judge it (REQUEST_TOO_OLD) settles nothing, so the outcome
 * stays UNKNOWN. Any other answer settles it.
 */
export function afterAttempts<T>(
  latest: Outcome<T>,
  earlier: Outcome<T> | undefined,
): Outcome<T> {
  if (
    !latest.ok &&
    earlier !== undefined &&
    !earlier.ok &&
    earlier.error.code === Code.UNKNOWN &&
    [Code.UNAVAILABLE, Code.TIMEOUT, Code.LOCKED, Code.REQUEST_TOO_OLD].includes(latest.error.code)
  ) {
    return earlier;
  }
  return latest;
}

/** One item's result in a batch: its value, or why it failed. */
export type Outcome<T> = { ok: true; value: T } | { ok: false; error: ColonyError };
