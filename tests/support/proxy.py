"""A tiny TCP proxy that drops the first responses: the request reaches the server (and is
done there), the answer never reaches the client, whose connection is closed instead. Or,
with `refuse`, the first requests never reach the server and are answered with that status
line and `Retry-After: 0` (an overloaded server or a load balancer's 503)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class DroppingProxy:
    def __init__(self, upstream_port: int, drop: int = 1, refuse: list[str] | None = None,
                 ) -> None:
        self.refuse = list(refuse or [])
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream_port = upstream_port
        self.to_drop = drop
        self.dropped = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            status = self.refuse.pop(0) if self.refuse else None
        if status is not None:
            with contextlib.suppress(OSError):
                client.recv(65536)
                body = b'{"error":"unavailable","message":"try again"}'
                client.sendall(f"HTTP/1.1 {status}\r\nRetry-After: 0\r\nConnection: close\r\n"
                               f"Content-Type: application/json\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                with self._lock:
                    drop = self.dropped < self.to_drop
                    if drop:
                        self.dropped += 1
                if drop:  # the server answered: the client never hears it
                    break
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()


@contextlib.contextmanager
def dropping_proxy(upstream_port: int, drop: int = 1,
                   refuse: list[str] | None = None) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(upstream_port, drop, refuse)
    try:
        yield proxy
    finally:
        proxy.close()
