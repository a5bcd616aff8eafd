"""A TCP proxy on loopback that a test can cut and restore, to take PostgreSQL or Redis away
from one server process without stopping the shared service the rest of the suite uses.

    proxy = TCPProxy("127.0.0.1", 5432)      # listens on 127.0.0.1:proxy.port
    proxy.cut()                              # every connection reset; new ones refused
    proxy.restore()                          # connections pass again
    proxy.cut_on(b"COMMIT")                  # cut when a client sends these bytes, and drop them
    proxy.blackhole()                        # connections accepted, nothing ever answered

The listening socket stays open while cut: a new connection is accepted and reset at once,
as a server that has just died does (the client sees a reset or EOF, at once).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TCPProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode = "up"  # "up", "cut", "blackhole"
        self.trigger: bytes | None = None
        self.cuts = 0
        self._pairs: set[tuple[socket.socket, socket.socket | None]] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name=f"proxy-{self.port}").start()

    # --- control -----------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until restore()."""
        with self._lock:
            self.mode = "cut"
            self.trigger = None
            pairs, self._pairs = self._pairs, set()
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def blackhole(self) -> None:
        """Like a network that drops packets: open connections and new ones get no answer."""
        with self._lock:
            self.mode = "blackhole"
            self.trigger = None

    def restore(self) -> None:
        """Let connections through again. Connections opened before are reset (after a
        blackhole, bytes were lost on them; a client notices, as after a real timeout)."""
        with self._lock:
            self.mode = "up"
            self.trigger = None
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def cut_on(self, marker: bytes) -> None:
        """Cut everything the moment a client sends `marker`; those bytes never reach the server."""
        with self._lock:
            self.trigger = marker

    def close(self) -> None:
        self._closed = True
        self.cut()
        # shutdown() wakes the accept loop's thread (a bare close() leaves it blocked in accept()).
        _close(self.listener)

    # --- plumbing ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "cut":
                _reset(client)
                continue
            if self.mode == "blackhole":
                with self._lock:
                    self._pairs.add((client, None))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(client, upstream, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, pair, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair, from_client: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue  # swallowed: the other side waits for an answer that never comes
                if self.mode != "up":
                    break
                if from_client and self.trigger is not None and self.trigger in data:
                    self.cut()
                    return
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            _close(sock)


def _reset(sock: socket.socket | None) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server's kernel answers."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes a thread blocked in recv() on this socket (close() alone may not).
        sock.shutdown(socket.SHUT_RDWR)
    _close(sock)


def _close(sock: socket.socket | None) -> None:
    """Shut down, then close: a thread blocked in recv() on the socket keeps the connection
    open through a bare close() (Linux), but wakes on shutdown()."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
