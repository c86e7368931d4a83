"""A TCP relay in front of a real server, so a test can cut the network to it and restore it (an outage)."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from producer import processes


class TcpRelay:
    """Listens on a free port and relays every connection to `target_port`; `cut()` refuses and drops them all."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = processes.free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """New connections are refused and open ones are reset, as when the server's host goes away."""
        with self._lock:
            doomed, self._sockets = [*self._sockets], set()
            if self._listener is not None:
                doomed.append(self._listener)
                self._listener = None
        for sock in doomed:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return  # cut
            with self._lock:
                if self._listener is not listener:
                    downstream.close()
                    upstream.close()
                    return
                self._sockets.update((downstream, upstream))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._sockets.difference_update((source, sink))
