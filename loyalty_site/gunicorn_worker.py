"""gunicorn's gthread worker with one thread, serving on its event loop's own thread.

    gunicorn loyalty_site.wsgi --worker-class loyalty_site.gunicorn_worker.OneThreadWorker ...

gthread with `--threads 1` is what keeps the point of sale's connections alive (the sync
worker closes each after one answer), but every request still crosses between two threads:
the event loop hands the connection to a one-thread pool (a queue and a wake-up), the pool
thread answers it and hands it back through a pipe the loop wakes on, and the loop registers
the socket again. This worker answers on the loop's thread instead: the same gunicorn code
parses, calls the application and writes, and the connection goes back to the poller as
gthread puts it back, with no thread switch in between. Measured with both worker classes
serving purchases at the same moment (bench/RESULTS.md, seventh round): 2-11 % less gunicorn
CPU a request (such pairs favour the busier server, so somewhat less), 3-5 fewer context
switches a request and none of the handover's `futex` calls.

What stays as gthread does it: accepting, keep-alive and its timeout, graceful shutdown, the
arbiter's heartbeat between requests. A new connection waits for its first bytes on the
poller (gthread waits up to 5 s on the pool thread, then does the same), so a client that
connects and says nothing blocks nobody. A client that stops half way through a request holds
the worker as it holds gthread's one thread; behind the proxy that terminates TLS (the README's
production layout) requests arrive whole. With `--threads` above 1 the worker is gthread,
unchanged. HTTP/2 needs the thread pool (a connection is served for its whole life): the
worker refuses to start with it.
"""

from __future__ import annotations

import selectors
import time
from functools import partial

from gunicorn.workers import gthread


class _Done:
    """What finish_request expects of the pool's future: a result, never cancelled."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def cancelled(self) -> bool:
        return False


class OneThreadWorker(gthread.ThreadWorker):
    @classmethod
    def check_config(cls, cfg, log):
        super().check_config(cfg, log)
        http2 = "h2" in cfg.http_protocols or cfg.http2_cleartext != "off"
        if cfg.threads == 1 and http2:
            raise RuntimeError("OneThreadWorker serves HTTP/1.x only: run gthread for HTTP/2")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._serving = False
        self._next: list = []

    def enqueue_req(self, conn):
        if self.cfg.threads != 1:
            return super().enqueue_req(conn)
        if not conn.initialized and not conn.data_ready:
            self._await_first_bytes(conn)
            return None
        if self._serving:  # from finish_request: bytes of the next request were read already
            self._next.append(conn)
            return None
        self._serving = True
        try:
            while conn is not None:
                self.finish_request(conn, _Done(self.handle(conn)))
                conn = self._next.pop() if self._next else None
        finally:
            self._serving = False
        return None

    def _await_first_bytes(self, conn):
        # As gthread's finish_request does with a connection its thread gave up waiting on.
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + max(self.cfg.keepalive, gthread.DEFAULT_WORKER_DATA_TIMEOUT)
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))
