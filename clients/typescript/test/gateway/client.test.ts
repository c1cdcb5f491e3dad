// The client against a real gateway (started by clients/with-cluster.sh, or the one named by
// COLONY_GATEWAY): authentication, transactions and their failures, idempotent replays,
// batches, many requests in flight on one connection, trades across players, and the retry
// rules when a connection breaks with a write in flight.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client, Code, ColonyError, MultiTransaction, Transaction, type ClientOptions } from "../../src/index.js";
import { Proxy } from "./proxy.js";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the suite with bash clients/with-cluster.sh`);
  return value;
}
const gateway = required("COLONY_GATEWAY");
const gameToken = required("COLONY_GAME_TOKEN");
const adminToken = required("COLONY_ADMIN_TOKEN");
const run = randomUUID().slice(0, 8);
const player = (name: string) => `ts-${run}-${name}`;

const clients: Client[] = [];
async function connect(options: Partial<ClientOptions> = {}): Promise<Client> {
  const client = await Client.connect({ address: gateway, token: adminToken, ...options });
  clients.push(client);
  return client;
}
after(() => {
  for (const c of clients) c.close();
});

/** Runs `body` with a proxy in front of the gateway (ending TLS with `credentials`), then stops it. */
async function throughProxy(
  body: (proxy: Proxy, address: string) => Promise<void>,
  credentials?: { key: string; cert: string },
): Promise<void> {
  const [host, port] = gateway.split(":");
  const proxy = new Proxy({ host: host!, port: Number(port) }, credentials);
  const address = await proxy.start();
  try {
    await body(proxy, address);
  } finally {
    await proxy.stop();
  }
}

async function rejectsWith(promise: Promise<unknown>, code: Code): Promise<ColonyError> {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof ColonyError, `a ColonyError, not ${String(e)}`);
    assert.equal(e.codeName, Code[code]);
    return e;
  }
  assert.fail(`expected ${Code[code]}`);
}

test("the Hello tells the role and limits; an unknown token is refused", async () => {
  const admin = await connect();
  const session = await admin.session();
  assert.equal(session.role, "admin");
  assert.ok(session.maxInFlight > 0 && session.maxTransactionsPerBatch > 0 && session.maxFrameBytes > 0);
  const game = await connect({ token: gameToken });
  assert.equal((await game.session()).role, "game");
  await rejectsWith(Client.connect({ address: gateway, token: "not-a-token" }), Code.UNAUTHENTICATED);
  assert.ok((await admin.ping()) >= 0);
});

test("a game server writes its player, reads it back, and sees only public entries of others", async () => {
  const game = await connect({ token: gameToken });
  const alice = player("alice");
  const bob = player("bob");
  const made = await game.execute(
    new Transaction(alice)
      .actingFor(alice)
      .checkVersion(0)
      .set("title", "Dragon slayer", "public")
      .increment("gold", 100, "private", { min: 0 })
      .read("gold", "title"),
  );
  assert.equal(made.version, 1n);
  assert.equal(made.counter("gold"), 100);
  assert.equal(made.text("title"), "Dragon slayer");
  assert.equal(made.replayed, false);

  const own = await game.getPlayer(alice, { actingFor: alice });
  assert.equal(own.version, 1n);
  assert.deepEqual(own.entries.map((e) => e.name).sort(), ["gold", "title"]);
  const seen = await game.getPlayer(alice, { access: "public", actingFor: bob });
  assert.deepEqual(seen.entries.map((e) => e.name), ["title"]);
  await rejectsWith(game.getPlayer(alice, { actingFor: bob }), Code.FORBIDDEN);
  await rejectsWith(game.getPlayer(alice), Code.FORBIDDEN);
  await rejectsWith(game.login(player("nobody")), Code.NOT_FOUND);
  assert.equal((await game.login(alice)).counter("gold"), 100);
});

test("failed checks and bounds apply nothing and say where they failed", async () => {
  const client = await connect();
  const carol = player("carol");
  await client.execute(new Transaction(carol).increment("gold", 5, "private"));
  const conflict = await rejectsWith(
    client.execute(new Transaction(carol).set("x", "1", "public").checkVersion(7)),
    Code.CONFLICT,
  );
  assert.equal(conflict.version, 1n);
  assert.equal(conflict.failedOperation, 1);
  assert.equal(conflict.retry, "after_reread");
  const bounds = await rejectsWith(
    client.execute(new Transaction(carol).increment("gold", -6, "private", { min: 0 })),
    Code.OUT_OF_BOUNDS,
  );
  assert.equal(bounds.failedOperation, 0);
  await rejectsWith(client.execute(new Transaction(carol).set("bad name", "1", "public")), Code.INVALID);
  const after = await client.getPlayer(carol);
  assert.equal(after.version, 1n);
  assert.deepEqual(after.entries.map((e) => e.name), ["gold"]);
});

test("the same key replays the first result; other content under it is a mismatch", async () => {
  const client = await connect();
  const dave = player("dave");
  const key = client.nextKey();
  const first = await client.execute(new Transaction(dave).withKey(key).increment("gold", 7, "public").read("gold"));
  const again = await client.execute(new Transaction(dave).withKey(key).increment("gold", 7, "public").read("gold"));
  assert.equal(again.replayed, true);
  assert.equal(again.version, first.version);
  assert.equal(again.counter("gold"), 7);
  await rejectsWith(
    client.execute(new Transaction(dave).withKey(key).increment("gold", 8, "public")),
    Code.IDEMPOTENCY_MISMATCH,
  );
  assert.equal((await client.getPlayer(dave)).counter("gold"), 7);
});

test("a batch answers each transaction in order, one failure leaving the others", async () => {
  const client = await connect();
  const [a, b, c] = [player("batch-a"), player("batch-b"), player("batch-c")];
  const results = await client.executeBatch([
    new Transaction(a).increment("n", 1, "public"),
    new Transaction(b).checkVersion(5).increment("n", 1, "public"),
    new Transaction(c).increment("n", 3, "public").read("n"),
  ]);
  assert.equal(results.length, 3);
  assert.ok(results[0]!.ok && results[0]!.value.version === 1n);
  assert.ok(!results[1]!.ok && results[1]!.error.code === Code.CONFLICT);
  assert.ok(results[2]!.ok && results[2]!.value.counter("n") === 3);
});

test("hundreds of requests in flight on one connection are each answered to their caller", async () => {
  const client = await connect();
  const session = await client.session();
  const players = Array.from({ length: 20 }, (_, i) => player(`pipe-${i}`));
  const count = Math.ceil((session.maxInFlight + 100) / players.length) * players.length;
  const answers = await Promise.all(
    Array.from({ length: count }, (_, i) =>
      client.execute(new Transaction(players[i % players.length]!).increment("n", 1, "public").read("n")),
    ),
  );
  assert.equal(answers.length, count);
  for (const p of players) {
    const read = await client.getPlayer(p);
    assert.equal(read.counter("n"), count / players.length);
    assert.equal(read.version, BigInt(count / players.length));
  }
  // Each caller got its own answer: the versions of one player are 1..n, each once.
  const versions = answers.filter((_, i) => i % players.length === 0).map((a) => a.version);
  assert.deepEqual(
    [...versions].sort((x, y) => Number(x - y)),
    Array.from({ length: count / players.length }, (_, i) => BigInt(i + 1)),
  );
});

test("a trade moves gold between players all or nothing", async () => {
  const game = await connect({ token: gameToken });
  const [seller, buyer] = [player("seller"), player("buyer")];
  for (const p of [seller, buyer]) {
    await game.execute(new Transaction(p).actingFor(p).increment("gold", 50, "private").set("sword", "no", "public"));
  }
  const trade = (gold: number) =>
    new MultiTransaction()
      .actingFor(buyer)
      .participant(buyer, (p) => p.increment("gold", -gold, "private", { min: 0 }).set("sword", "yes", "public"))
      .participant(seller, (p) => p.increment("gold", gold, "private").set("sword", "no", "public"), "public");
  const done = await game.executeMulti(trade(30));
  assert.deepEqual(done.participants.map((p) => p.version), [2n, 2n]);
  const refused = await rejectsWith(game.executeMulti(trade(30)), Code.OUT_OF_BOUNDS);
  assert.equal(refused.failedParticipant, 0);
  const admin = await connect();
  assert.equal((await admin.getPlayer(buyer)).counter("gold"), 20);
  assert.equal((await admin.getPlayer(seller)).counter("gold"), 80);
  assert.equal((await admin.getPlayer(seller)).version, 2n);

  const mixed = await game.executeItems([new Transaction(seller, "public").actingFor(buyer).read("sword"), trade(10)]);
  assert.ok(mixed[0]!.ok && mixed[1]!.ok);
  await rejectsWith(
    game.executeMulti(new MultiTransaction().participant(buyer, (p) => p.read()).participant(buyer, (p) => p.read())),
    Code.FORBIDDEN,
  );
});

test("a write whose answer is lost is retried with its key and applies once", () =>
  throughProxy(async (proxy, address) => {
    const client = await connect({ address, requestDeadlineMs: 10_000 });
    const erin = player("erin");
    await client.execute(new Transaction(erin).increment("gold", 1, "public"));
    // The next request reaches the gateway, which applies and answers it; the answer is thrown
    // away and the connection breaks: the client must send it again, unchanged, on a new
    // connection.
    proxy.swallowAnswers = true;
    proxy.onSwallowed = () => {
      proxy.onSwallowed = undefined;
      proxy.swallowAnswers = false;
      proxy.dropAll();
    };
    const retried = await client.execute(new Transaction(erin).increment("gold", 10, "public").read("gold"));
    assert.equal(retried.replayed, true, "the retry found the first attempt applied");
    assert.equal(retried.counter("gold"), 11);
    assert.equal((await client.getPlayer(erin)).version, 2n);
  }));

test("an outcome once unknown stays unknown when the retries are not answered", () =>
  throughProxy(async (proxy, address) => {
    const client = await connect({ address, requestDeadlineMs: 600 });
    const fay = player("fay");
    proxy.swallowAnswers = true;
    proxy.onRequest = () => {
      proxy.onRequest = undefined;
      setTimeout(() => proxy.dropAll(), 50);
    };
    const lost = await rejectsWith(client.execute(new Transaction(fay).increment("gold", 1, "public")), Code.UNKNOWN);
    assert.equal(lost.mayHaveApplied, true);
    // A read whose answer is lost applied nothing: it is merely unavailable.
    const reads = await client.executeBatch([new Transaction(fay, "public").read("gold")]);
    assert.ok(!reads[0]!.ok && [Code.UNAVAILABLE, Code.TIMEOUT].includes(reads[0]!.error.code));
  }));

test("a closed client fails at once without connecting again", async () => {
  const client = await Client.connect({ address: gateway, token: adminToken });
  client.close();
  const started = performance.now();
  await rejectsWith(client.execute(new Transaction(player("gone")).increment("n", 1, "public")), Code.UNAVAILABLE);
  await rejectsWith(client.getPlayer(player("gone")), Code.UNAVAILABLE);
  assert.ok(performance.now() - started < 1000, "refused at once, not retried until the deadline");
});

test("over TLS the client checks the gateway's certificate and works as over TCP", async () => {
  // A self-signed certificate for "localhost", and a proxy that ends TLS in front of the gateway.
  const dir = mkdtempSync(join(tmpdir(), "colony-ts-tls-"));
  const [key, cert] = [join(dir, "key.pem"), join(dir, "cert.pem")];
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost",
  ], { stdio: "ignore" });
  const credentials = { key: readFileSync(key, "utf8"), cert: readFileSync(cert, "utf8") };
  rmSync(dir, { recursive: true });
  await throughProxy(async (proxy, address) => {
    const client = await connect({ address, tls: { ca: credentials.cert, serverName: "localhost" } });
    const gus = player("gus");
    assert.equal((await client.execute(new Transaction(gus).increment("n", 2, "public").read("n"))).counter("n"), 2);
    // A certificate the client does not trust, or a name it does not carry: no connection.
    await rejectsWith(Client.connect({ address, token: adminToken, tls: {} }), Code.UNAVAILABLE);
    await rejectsWith(
      Client.connect({ address, token: adminToken, tls: { ca: credentials.cert, serverName: "gateway.example" } }),
      Code.UNAVAILABLE,
    );
  }, credentials);
});
