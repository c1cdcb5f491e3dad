"""A TCP proxy between the client and the gateway that a test can break: drop every
connection, or forward requests while swallowing the answers (so a write reaches the gateway
and its answer is lost)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable, Optional, Set


class Proxy:
    def __init__(self, host: str, port: int, tls: Optional[ssl.SSLContext] = None) -> None:
        """With `tls` the proxy ends TLS (a server context) and forwards plain TCP."""
        self._target = (host, port)
        self._tls = tls
        self._writers: Set[asyncio.StreamWriter] = set()
        self._server: Optional[asyncio.base_events.Server] = None
        self.swallow_answers = False
        """While true, the gateway's answers are thrown away."""
        self.on_request: Optional[Callable[[], None]] = None
        """Called with each chunk the client sends, after it is forwarded."""
        self.on_swallowed: Optional[Callable[[], None]] = None
        """Called with each chunk of answers thrown away (the gateway has answered)."""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, up_w}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while chunk := await r.read(65536):
                    if answers and self.swallow_answers:
                        if self.on_swallowed is not None:
                            self.on_swallowed()
                        continue
                    w.write(chunk)
                    if not answers and self.on_request is not None:
                        self.on_request()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                for x in (client_w, up_w):
                    x.close()

        await asyncio.gather(pump(client_r, up_w, False), pump(up_r, client_w, True))

    def drop_all(self) -> None:
        """Breaks every connection through the proxy."""
        for w in self._writers:
            transport = w.transport
            transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
