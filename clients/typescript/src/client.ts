/**
 * The gateway client: one connection carrying many requests in flight, matched by request
 * id; the Hello with its token; optional TLS; a new connection after a lost one; and the
 * retry rules of proto/PROTOCOL.md — UNAVAILABLE, TIMEOUT, UNKNOWN and LOCKED are sent again
 * unchanged (same idempotency key) with capped exponential backoff and full jitter until the
 * request deadline, an outcome once UNKNOWN stays UNKNOWN until an attempt answers
 * definitely, and every other code is final.
 */
import * as net from "node:net";
import * as tls from "node:tls";
import { randomUUID } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  BatchItemSchema,
  BatchSchema,
  ClientFrameSchema,
  Code,
  Role,
  ServerFrameSchema,
  type BatchItem,
  type ClientFrame,
  type HelloResult,
  type ServerFrame,
  type Transaction as TransactionMessage,
} from "./gen/colony/v1/colony_pb.js";
import { afterAttempts, ColonyError, type Outcome } from "./errors.js";
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameDecoder } from "./framing.js";
import { Committed, committedOf, MultiCommitted, multiCommittedOf } from "./results.js";
import { accessOf, MultiTransaction, Transaction, type AccessName, type IdempotencyKey } from "./transaction.js";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** How to reach and talk to a gateway. */
export interface ClientOptions {
  /** The gateway, `host:port`. */
  address: string;
  /** A token from the gateway's configuration; it decides the connection's role. */
  token: string;
  /** Shown in the gateway's logs. */
  clientName?: string;
  /** Client id of the idempotency keys the client makes: unique per process (default: a UUID). */
  clientId?: string;
  /** Time allowed to connect and authenticate (default 2000 ms). */
  connectTimeoutMs?: number;
  /** Time allowed for one call, retries and reconnections included (default 5000 ms). */
  requestDeadlineMs?: number;
  /** First retry delay, doubling per attempt up to `backoffMaxMs`, with full jitter (default 10 ms). */
  backoffBaseMs?: number;
  /** Longest retry delay (default 500 ms). */
  backoffMaxMs?: number;
  /** Largest frame accepted from the gateway (default 4 MiB). */
  maxFrameBytes?: number;
  /** TLS to the gateway: the certificates to trust (PEM) and the name to check. */
  tls?: { ca?: string | Buffer; serverName?: string };
}

type Options = Required<Omit<ClientOptions, "tls">> & Pick<ClientOptions, "tls">;

/** The gateway's answer to Hello: the connection's role and limits. */
export interface Session {
  role: "game" | "admin";
  maxFrameBytes: number;
  maxInFlight: number;
  maxTransactionsPerBatch: number;
  serverVersion: string;
}

type RequestBody = ClientFrame["body"];
type AnswerBody = ServerFrame["body"];

interface Waiter {
  resolve(frame: ServerFrame): void;
  reject(error: ColonyError): void;
}

function now(): number {
  return performance.now();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function unavailable(reason: string): ColonyError {
  return new ColonyError(Code.UNAVAILABLE, reason);
}

function splitAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(":");
  const port = Number(address.slice(at + 1));
  if (at <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new ColonyError(Code.INVALID, `gateway address ${JSON.stringify(address)} is not host:port`);
  }
  return { host: address.slice(0, at).replace(/^\[(.*)\]$/, "$1"), port };
}

/** One live, authenticated connection. */
class Connection {
  readonly pending = new Map<bigint, Waiter>();
  /** No new requests go here (lost, closed, or the gateway said GoAway). */
  closed = false;
  private corked = false;
  private readonly decoder: FrameDecoder;
  private helloWaiter: Waiter | undefined;
  session: Session | undefined;

  private constructor(
    private readonly socket: net.Socket,
    maxFrameBytes: number,
  ) {
    this.decoder = new FrameDecoder(maxFrameBytes);
    socket.on("data", (chunk: Buffer) => this.received(chunk));
    socket.on("error", (e) => this.fail(`connection error: ${e.message}`));
    socket.on("close", () => this.fail("closed by the gateway"));
  }

  /** Connects, says Hello and waits for the answer, within `timeoutMs`. */
  static open(o: Options, timeoutMs: number): Promise<Connection> {
    const { host, port } = splitAddress(o.address);
    const socket = o.tls
      ? tls.connect({
          host,
          port,
          ca: o.tls.ca,
          // SNI carries names only; an IP address is still checked against the certificate.
          ...(o.tls.serverName !== undefined || net.isIP(host) === 0 ? { servername: o.tls.serverName ?? host } : {}),
        })
      : net.connect({ host, port });
    socket.setNoDelay(true);
    const conn = new Connection(socket, o.maxFrameBytes);
    return new Promise<Connection>((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.fail("timed out");
        reject(unavailable(`connecting to ${o.address} timed out`));
      }, timeoutMs);
      conn.helloWaiter = {
        resolve: (frame) => {
          clearTimeout(timer);
          if (frame.body.case === "hello") {
            conn.session = sessionOf(frame.body.value);
            resolve(conn);
          } else if (frame.body.case === "goAway") {
            conn.fail("refused");
            reject(new ColonyError(frame.body.value.code, frame.body.value.reason));
          } else {
            conn.fail("unexpected answer to Hello");
            reject(new ColonyError(Code.INTERNAL, "unexpected answer to Hello"));
          }
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(unavailable(`cannot connect to ${o.address}: ${e.message}`));
        },
      };
      const hello = create(ClientFrameSchema, {
        requestId: 0n,
        body: {
          case: "hello",
          value: { token: o.token, clientName: o.clientName, protocolVersion: PROTOCOL_VERSION },
        },
      });
      socket.write(encodeFrame(toBinary(ClientFrameSchema, hello)));
    });
  }

  /** Sends a frame; writes of one tick leave in one segment. */
  send(frame: ClientFrame): void {
    const message = toBinary(ClientFrameSchema, frame);
    const limit = this.session?.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    if (message.length > limit) {
      throw new ColonyError(Code.TOO_LARGE, `request of ${message.length} bytes over the gateway's ${limit}`);
    }
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(encodeFrame(message));
  }

  /** Ends the connection: everything in flight fails (writes UNKNOWN). Idempotent. */
  fail(reason: string): void {
    this.closed = true;
    this.socket.destroy();
    const waiter = this.helloWaiter;
    this.helloWaiter = undefined;
    waiter?.reject(unavailable(reason));
    const lost = new ColonyError(Code.UNKNOWN, `connection to the gateway lost: ${reason}`);
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const w of waiting) w.reject(lost);
  }

  private received(chunk: Buffer): void {
    let messages: Uint8Array[];
    try {
      messages = this.decoder.push(chunk);
    } catch (e) {
      this.fail(`from the gateway: ${(e as Error).message}`);
      return;
    }
    for (const message of messages) {
      let frame: ServerFrame;
      try {
        frame = fromBinary(ServerFrameSchema, message);
      } catch (e) {
        this.fail(`bad frame from the gateway: ${(e as Error).message}`);
        return;
      }
      if (this.helloWaiter !== undefined) {
        const waiter = this.helloWaiter;
        this.helloWaiter = undefined;
        waiter.resolve(frame);
      } else if (frame.body.case === "goAway") {
        // No new requests go here; answers to sent ones may still come.
        this.closed = true;
      } else {
        const waiter = this.pending.get(frame.requestId);
        if (waiter !== undefined) {
          this.pending.delete(frame.requestId);
          waiter.resolve(frame);
        }
      }
    }
  }
}

function sessionOf(h: HelloResult): Session {
  return {
    role: h.role === Role.ADMIN ? "admin" : "game",
    maxFrameBytes: h.maxFrameBytes,
    maxInFlight: h.maxInFlight,
    maxTransactionsPerBatch: h.maxTransactionsPerBatch,
    serverVersion: h.serverVersion,
  };
}

/** A batch entry ready to send: its message fixed (key included) for every attempt. */
interface Prepared {
  item: BatchItem;
  transaction: TransactionMessage | undefined;
  writes: boolean;
}

/** What a batch of items returns: a transaction's result or a trade's. */
export type ItemOutcome = Outcome<Committed> | Outcome<MultiCommitted>;

function outcome<T>(f: () => T): Outcome<T> {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    return { ok: false, error: asColonyError(e) };
  }
}

function asColonyError(e: unknown): ColonyError {
  if (e instanceof ColonyError) return e;
  return new ColonyError(Code.INTERNAL, e instanceof Error ? e.message : String(e));
}

/** A gateway client. One instance shares one connection among all its calls. */
export class Client {
  private readonly o: Options;
  private conn: Connection | undefined;
  private opening: Promise<Connection> | undefined;
  private nextRequestId = 1n;
  private nextKeyId = 1n;
  private closedByCaller = false;

  private constructor(options: ClientOptions) {
    this.o = {
      clientName: "colony-ts-client",
      clientId: `ts-${randomUUID()}`,
      connectTimeoutMs: 2000,
      requestDeadlineMs: 5000,
      backoffBaseMs: 10,
      backoffMaxMs: 500,
      maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
      ...options,
    };
  }

  /** Connects and authenticates; fails with the gateway's code (e.g. UNAUTHENTICATED). */
  static async connect(options: ClientOptions): Promise<Client> {
    const client = new Client(options);
    await client.connection(now() + client.o.connectTimeoutMs);
    return client;
  }

  /** The client id of the keys this client makes. */
  get clientId(): string {
    return this.o.clientId;
  }

  /** A fresh idempotency key: this client's id and the next request number. */
  nextKey(): IdempotencyKey {
    const key = { clientId: this.o.clientId, requestId: this.nextKeyId };
    this.nextKeyId += 1n;
    return key;
  }

  /** The role and limits the gateway announced on the current connection. */
  async session(): Promise<Session> {
    const conn = await this.connection(now() + this.o.connectTimeoutMs);
    if (conn.session === undefined) throw new ColonyError(Code.INTERNAL, "no session");
    return conn.session;
  }

  /**
   * Closes the connection: requests in flight end at once (writes among them UNKNOWN, as
   * for any lost connection, and are not retried), and later calls fail UNAVAILABLE at once,
   * without connecting again.
   */
  close(): void {
    this.closedByCaller = true;
    this.conn?.fail("closed by the client");
    this.conn = undefined;
  }

  /** Runs one transaction; throws a ColonyError unless it committed. */
  async execute(transaction: Transaction): Promise<Committed> {
    const [result] = await this.executeBatch([transaction]);
    if (result === undefined) throw new ColonyError(Code.INTERNAL, "no result");
    if (!result.ok) throw result.error;
    return result.value;
  }

  /**
   * Runs transactions in one batch, retrying each retryable one with its own key until it
   * settles or the deadline passes. One outcome per transaction, in order; throws only when
   * the batch as a whole is refused (e.g. TOO_LARGE for too many transactions).
   */
  async executeBatch(transactions: Transaction[]): Promise<Outcome<Committed>[]> {
    const prepared = transactions.map((t) => this.prepare(t));
    return (await this.runBatch(prepared, false)) as Outcome<Committed>[];
  }

  /** Runs a batch mixing transactions and multi-player transactions; one outcome per item. */
  async executeItems(items: (Transaction | MultiTransaction)[]): Promise<ItemOutcome[]> {
    return this.runBatch(
      items.map((i) => this.prepare(i)),
      true,
    );
  }

  /** Runs one multi-player transaction; throws a ColonyError unless it committed. */
  async executeMulti(transaction: MultiTransaction): Promise<MultiCommitted> {
    const [result] = await this.executeItems([transaction]);
    if (result === undefined) throw new ColonyError(Code.INTERNAL, "no result");
    if (!result.ok) throw result.error;
    return result.value as MultiCommitted;
  }

  /** Reads a whole player as its owner or as the public; `actingFor` is required for the game role. */
  async getPlayer(playerId: string, options: { access?: AccessName; actingFor?: string } = {}): Promise<Committed> {
    return this.readWithRetries({
      case: "getPlayer",
      value: {
        $typeName: "colony.v1.GetPlayer",
        playerId,
        access: accessOf(options.access ?? "owner"),
        actingPlayerId: options.actingFor ?? "",
      },
    });
  }

  /** Logs a player in: marks it active and returns everything it owns. */
  async login(playerId: string): Promise<Committed> {
    return this.readWithRetries({ case: "login", value: { $typeName: "colony.v1.Login", playerId } });
  }

  /** A round trip to the gateway, in milliseconds. */
  async ping(): Promise<number> {
    const started = now();
    const nonce = BigInt(Math.floor(Math.random() * Number.MAX_SAFE_INTEGER));
    const answer = await this.call(
      { case: "ping", value: { $typeName: "colony.v1.Ping", nonce } },
      started + this.o.requestDeadlineMs,
    );
    if (answer.case !== "pong" || answer.value.nonce !== nonce) {
      throw new ColonyError(Code.INTERNAL, "unexpected answer to a ping");
    }
    return now() - started;
  }

  private prepare(t: Transaction | MultiTransaction): Prepared {
    if (t instanceof Transaction) {
      const needsKey = t.writes && t.idempotencyKey === undefined;
      const transaction = t.toProto(needsKey ? this.nextKey() : undefined);
      return {
        item: create(BatchItemSchema, { item: { case: "transaction", value: transaction } }),
        transaction,
        writes: t.writes,
      };
    }
    const multi = t.toProto(t.idempotencyKey === undefined ? this.nextKey() : undefined);
    return { item: create(BatchItemSchema, { item: { case: "multi", value: multi } }), transaction: undefined, writes: true };
  }

  /** The live connection, opening one if there is none, by `deadline` at the latest. */
  private async connection(deadline: number): Promise<Connection> {
    if (this.closedByCaller) throw unavailable("the client was closed");
    if (this.conn !== undefined && !this.conn.closed) return this.conn;
    if (this.opening === undefined) {
      const timeout = Math.max(0, Math.min(this.o.connectTimeoutMs, deadline - now()));
      this.opening = Connection.open(this.o, timeout).finally(() => {
        this.opening = undefined;
      });
      this.conn = await this.opening;
      if (this.closedByCaller) {
        this.conn.fail("closed by the client");
        throw unavailable("the client was closed");
      }
      return this.conn;
    }
    return this.opening;
  }

  /** Sends one request and waits for its answer until `deadline` (no retry). */
  private async call(body: RequestBody, deadline: number): Promise<AnswerBody> {
    if (now() >= deadline) throw new ColonyError(Code.TIMEOUT, "the deadline passed before sending");
    const conn = await this.connection(deadline);
    if (conn.closed) throw unavailable("connection closed before sending");
    const requestId = this.nextRequestId;
    this.nextRequestId += 1n;
    const frame = await new Promise<ServerFrame>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          conn.pending.delete(requestId);
          reject(new ColonyError(Code.UNKNOWN, "no answer from the gateway in time"));
        },
        Math.max(0, deadline - now()),
      );
      conn.pending.set(requestId, {
        resolve: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      try {
        conn.send(create(ClientFrameSchema, { requestId, body }));
      } catch (e) {
        conn.pending.delete(requestId);
        clearTimeout(timer);
        reject(asColonyError(e));
      }
    });
    if (frame.body.case === "error") throw new ColonyError(frame.body.value.code, frame.body.value.message);
    if (frame.body.case === undefined) throw new ColonyError(Code.INTERNAL, "empty answer");
    return frame.body;
  }

  /** The wait before retry `attempt`: uniform in [0, min(max, base·2^attempt)], within the deadline. */
  private backoff(attempt: number, deadline: number): number {
    const cap = Math.min(this.o.backoffMaxMs, this.o.backoffBaseMs * 2 ** Math.min(attempt, 30));
    return Math.min(Math.random() * cap, Math.max(0, deadline - now()));
  }

  /** The batch loop: sends what is pending, keeps each item's latest outcome, retries the retryable ones. */
  private async runBatch(items: Prepared[], asItems: boolean): Promise<ItemOutcome[]> {
    const deadline = now() + this.o.requestDeadlineMs;
    const results: (ItemOutcome | undefined)[] = new Array(items.length);
    let pending = items.map((_, i) => i);
    for (let attempt = 0; pending.length > 0; attempt++) {
      const batch = asItems
        ? create(BatchSchema, { items: pending.map((i) => items[i]!.item) })
        : create(BatchSchema, { transactions: pending.map((i) => items[i]!.transaction!) });
      let perItem: ItemOutcome[];
      try {
        const answer = await this.call({ case: "batch", value: batch }, deadline);
        if (answer.case === "batch" && asItems && answer.value.items.length === pending.length) {
          perItem = answer.value.items.map((r): ItemOutcome => {
            if (r.item.case === "multi") {
              const multi = r.item.value;
              return outcome(() => multiCommittedOf(multi));
            }
            const single = r.item.value;
            return outcome(() => {
              if (single === undefined) throw new ColonyError(Code.INTERNAL, "an empty item result");
              return committedOf(single);
            });
          });
        } else if (answer.case === "batch" && !asItems && answer.value.results.length === pending.length) {
          perItem = answer.value.results.map((r) => outcome(() => committedOf(r)));
        } else {
          throw new ColonyError(Code.INTERNAL, "unexpected answer to a batch");
        }
      } catch (e) {
        const error = asColonyError(e);
        if (attempt === 0 && !error.retryable) throw error;
        // After a first attempt the batch is no longer the unit: each item keeps what earlier
        // attempts said (an unknown outcome stays unknown).
        perItem = pending.map((i) => forItem(error, items[i]!));
      }
      const again: number[] = [];
      pending.forEach((i, k) => {
        const latest = perItem[k]!;
        const settled = afterAttempts(latest as Outcome<unknown>, results[i] as Outcome<unknown> | undefined);
        results[i] = settled as ItemOutcome;
        if (!settled.ok && settled.error.retryable && now() < deadline && !this.closedByCaller) again.push(i);
      });
      pending = again;
      if (pending.length > 0) {
        await sleep(this.backoff(attempt, deadline));
        if (now() >= deadline) break;
      }
    }
    return results.map((r) => r ?? { ok: false, error: new ColonyError(Code.INTERNAL, "no result") });
  }

  /** A player read, retried while it fails retryably and time is left. */
  private async readWithRetries(body: RequestBody): Promise<Committed> {
    const deadline = now() + this.o.requestDeadlineMs;
    for (let attempt = 0; ; attempt++) {
      try {
        const answer = await this.call(body, deadline);
        if (answer.case !== "player") throw new ColonyError(Code.INTERNAL, "unexpected answer to a player request");
        return committedOf(answer.value);
      } catch (e) {
        let error = asColonyError(e);
        // A read applies nothing: a lost answer leaves it merely unavailable.
        if (error.code === Code.UNKNOWN) error = unavailable(error.message);
        if (!error.retryable || now() >= deadline || this.closedByCaller) throw error;
        await sleep(this.backoff(attempt, deadline));
        if (now() >= deadline) throw error;
      }
    }
  }
}

/** A whole-call failure as one item sees it: a lost connection leaves a read merely unavailable. */
function forItem(error: ColonyError, item: Prepared): ItemOutcome {
  if (error.code === Code.UNKNOWN && !item.writes) {
    return { ok: false, error: new ColonyError(Code.UNAVAILABLE, error.message) };
  }
  return { ok: false, error };
}

