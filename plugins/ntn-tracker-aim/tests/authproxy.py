"""A reverse proxy for tests: forwards HTTP and WebSocket traffic to an upstream `aim server`, and
answers 403 to any request or WebSocket upgrade that lacks the required headers (none required: a
plain proxy). `delay_s` delays every response chunk, as a slow link would.

Each client connection carries one request (non-upgrade requests are forwarded with
`Connection: close`), so every request is checked. `drop_connections()` cuts every open
connection, which makes the aim client reconnect its WebSocket.
"""

from __future__ import annotations

import asyncio
import gc
import threading


class AuthProxy:
    def __init__(self, upstream_port: int, required: dict[str, str], delay_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s  # added before every chunk the server sends back
        self.required = {k.lower(): v for k, v in required.items()}
        self.accepted = {"http": 0, "websocket": 0}
        self.refused = {"http": 0, "websocket": 0}
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            first = await reader.readexactly(1)
            if not first.isalpha():  # e.g. a TLS handshake on this plain-HTTP port: refuse at once
                writer.close()
                return
            head = first + await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        kind = "websocket" if headers.get("upgrade", "").lower() == "websocket" else "http"
        if any(headers.get(k) != v for k, v in self.required.items()):
            self.refused[kind] += 1
            await asyncio.sleep(self.delay_s)  # a slow link delays refusals too
            body = b"<html><body>403 Forbidden: Access denied</body></html>"
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            writer.close()
            self._writers.discard(writer)
            return
        self.accepted[kind] += 1
        if kind == "http":
            kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
            head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.add(up_writer)
        up_writer.write(head)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, self.delay_s))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float = 0.0) -> None:
        try:
            while data := await reader.read(65536):
                if delay_s:
                    await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    def drop_connections(self) -> None:
        """Cut every open connection (client and upstream side)."""

        def cut() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(cut)

    def close(self) -> None:
        gc.collect()  # aim releases server-side resources when its objects die: let that happen while we serve
        self._loop.call_soon_threadsafe(self._server.close)
        self.drop_connections()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
