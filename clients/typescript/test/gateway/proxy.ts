// A TCP proxy between the client and the gateway that a test can break: drop every
// connection, or forward requests while swallowing the answers (so a write reaches the
// gateway and its answer is lost).
import * as net from "node:net";
import * as tls from "node:tls";

export class Proxy {
  private readonly sockets = new Set<net.Socket>();
  /** While true, the gateway's answers are thrown away. */
  swallowAnswers = false;
  /** Called with each chunk the client sends, after it is forwarded. */
  onRequest: (() => void) | undefined;
  /** Called with each chunk of answers thrown away (the gateway has answered). */
  onSwallowed: (() => void) | undefined;
  private server: net.Server | undefined;

  /** With `tlsCredentials` the proxy ends TLS (PEM key and certificate) and forwards plain TCP. */
  constructor(
    private readonly target: { host: string; port: number },
    private readonly tlsCredentials?: { key: string; cert: string },
  ) {}

  async start(): Promise<string> {
    const serve = (client: net.Socket) => {
      const upstream = net.connect(this.target);
      this.sockets.add(client);
      this.sockets.add(upstream);
      client.on("data", (chunk) => {
        upstream.write(chunk);
        this.onRequest?.();
      });
      upstream.on("data", (chunk) => {
        if (!this.swallowAnswers) client.write(chunk);
        else this.onSwallowed?.();
      });
      const end = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on("close", end);
      upstream.on("close", end);
      client.on("error", end);
      upstream.on("error", end);
    };
    this.server = this.tlsCredentials ? tls.createServer(this.tlsCredentials, serve) : net.createServer(serve);
    // A client that refuses the certificate ends the handshake; nothing to forward then.
    this.server.on("tlsClientError", () => {});
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    const address = this.server.address() as net.AddressInfo;
    return `127.0.0.1:${address.port}`;
  }

  /** Breaks every connection through the proxy. */
  dropAll(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  async stop(): Promise<void> {
    this.dropAll();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }
}
