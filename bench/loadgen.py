"""HTTP load generator for the integration API: standard library only (selectors, raw HTTP/1.1).

Run by bench/run.py as a separate process; prints one JSON document on stdout.

Two modes:
- closed: `--concurrency` connections each send the next request as soon as the previous
  answered. Measures the most the server sustains (and the latency at saturation).
- open: requests are due at a fixed `--rate`, whatever the server does; up to
  `--concurrency` are in flight. Latency is measured from when a request was *due*, not
  when a connection was free to send it, so a server that falls behind sees its queueing
  delay in the percentiles (no coordinated omission, as wrk2 does it).

Connections are kept alive when the server allows it (gthread); gunicorn's sync workers
close every connection after one response, and the reconnect is then part of the latency.
Only answers that arrive inside the measured window count (the warm-up before it is
discarded); in open mode, requests the server fell more than a second behind on by the end
of the window count as errors ("not sent").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import resource
import selectors
import socket
import sys
import time
from collections import Counter
from decimal import Decimal

CATEGORIES = ["coffee-beans", "pastry", "equipment", "tea", ""]


class Connection:
    """One keep-alive HTTP/1.1 connection, non-blocking, driven by the Driver's selector: a
    request in flight at a time, its answer parsed as bytes arrive. It reconnects when the
    server closes it."""

    def __init__(self, driver: Driver):
        self.driver = driver
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.raw = b""
        self.started = 0.0  # when the request in flight was sent (closed) or due (open)
        self.deadline = math.inf
        self.reused = False
        self.busy = False
        self.connects = 0

    def _open(self) -> None:
        d = self.driver
        self.sock = socket.create_connection((d.host, d.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        d.selector.register(self.sock, selectors.EVENT_READ, self)
        self.connects += 1

    def close(self) -> None:
        if self.sock is not None:
            self.driver.selector.unregister(self.sock)
            self.sock.close()
        self.sock = None
        self.buffer.clear()

    def send(self, raw: bytes, started: float, *, again: bool = False) -> None:
        if not again:
            self.raw, self.started = raw, started
            self.deadline = time.perf_counter() + self.driver.timeout
        self.busy = True
        self.reused = self.sock is not None
        if not self.reused:
            self._open()
        self.sock.sendall(self.raw)  # a few hundred bytes: the socket buffer takes them at once

    def readable(self) -> tuple[int, bytes] | None:
        """The answer once it is complete, None while it is not."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before a response")
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).split(b"\r\n")
        length, close = 0, False
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if len(self.buffer) < end + 4 + length:
            return None
        payload = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.busy = False
        if close:
            self.close()
        return int(head[0].split(b" ", 2)[1]), payload


class Workload:
    """What each request is: a new purchase, or a customer read."""

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.seq = 0
        self.auth = {"Authorization": f"Bearer {args.token}", "Accept": "application/json"}

    def _customer_for_purchase(self) -> str:
        a, rng = self.args, self.rng
        if rng.random() < a.unknown_fraction:
            # A shopper the loyalty system has never seen: recorded as a new non-member.
            return f"N{a.run_id}-{self.seq}"
        return f"B{rng.randint(1, a.customers):07d}"

    def _customer_for_read(self) -> str:
        a, rng = self.args, self.rng
        if rng.random() < a.history_read_fraction:
            return f"B{rng.randint(1, min(a.history_customers, a.customers)):07d}"
        return f"B{rng.randint(1, a.customers):07d}"

    def next(self) -> tuple[str, str, dict, bytes]:
        self.seq += 1
        if self.args.scenario == "customers":
            return "GET", f"/api/v1/customers/{self._customer_for_read()}", self.auth, b""
        if self.args.scenario == "floor":
            # The cost of the server itself: gunicorn, Django's handler, the API's middleware,
            # URL resolution and a JSON error, with no view, token check or database.
            return "GET", "/api/v1/", self.auth, b""
        rng = self.rng
        items = []
        for _ in range(rng.randint(1, 3)):
            cents = rng.randint(500, 60000)
            items.append(
                {
                    "sku": f"SKU-{rng.randint(1, 500)}",
                    "category": rng.choice(CATEGORIES),
                    "quantity": "1",
                    "amount": str(Decimal(cents) / 100),
                }
            )
        amount = sum(Decimal(i["amount"]) for i in items)
        body = {
            "external_id": f"bench-{self.args.run_id}-{self.seq}",
            "customer": self._customer_for_purchase(),
            "amount": str(amount),
            "currency": "DKK",
            "occurred_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "items": items,
        }
        headers = {**self.auth, "Content-Type": "application/json"}
        return "POST", "/api/v1/purchases", headers, json.dumps(body).encode()


class Recorder:
    """Counts what was answered inside the measured window; a request's latency runs from
    when it was sent (closed loop) or due (open loop) to its answer."""

    def __init__(self, window_start: float, window_end: float):
        self.window_start, self.window_end = window_start, window_end
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.failures: Counter = Counter()
        self.per_second: Counter = Counter()
        self.samples: list[str] = []

    def record(self, started: float, finished: float, status: int | None, error: str | None, body: bytes):
        if not self.window_start <= finished < self.window_end:
            return
        self.per_second[int(finished - self.window_start)] += 1
        if error is not None:
            self.failures[error] += 1
            return
        self.latencies.append(finished - started)
        self.statuses[status] += 1
        if status >= 400 and len(self.samples) < 5:
            self.samples.append(f"{status} {body[:300].decode(errors='replace')}")


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    # Nearest rank: the smallest value with at least p% of the values at or below it.
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


class Driver:
    """All connections on one selector in this one thread: for each request a send, a receive
    and a parse, with no event-loop machinery around them. The generator shares the two cores
    with the server it measures, so its own CPU a request is kept as low as plain Python
    allows (bench/RESULTS.md reports it: the "client" share)."""

    def __init__(self, args, workload: Workload, rec: Recorder):
        self.host, self.port, self.host_header = args.host, args.port, args.host_header
        self.timeout = args.timeout
        self.workload, self.rec = workload, rec
        self.selector = selectors.DefaultSelector()

    def _raw(self) -> bytes:
        method, path, headers, body = self.workload.next()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def _fail(self, conn: Connection, error: str) -> None:
        conn.close()
        conn.busy = False
        self.rec.record(conn.started, time.perf_counter(), None, error, b"")

    def _fire(self, conn: Connection, started: float) -> None:
        try:
            conn.send(self._raw(), started)
        except OSError as exc:
            self._fail(conn, type(exc).__name__)

    def _poll(self, timeout: float) -> list[Connection]:
        """Wait up to `timeout` for answers; the connections that became free."""
        freed = []
        for key, _ in self.selector.select(timeout):
            conn = key.data
            if not conn.busy:  # the server closed an idle kept-alive connection
                conn.close()
                continue
            try:
                answer = conn.readable()
            except BlockingIOError:
                continue
            except (ConnectionError, OSError) as exc:
                if conn.reused and not conn.buffer and conn.busy:
                    # The server closed an idle kept-alive connection before reading the
                    # request: nothing was processed, so sending it again is safe.
                    conn.close()
                    try:
                        conn.send(b"", conn.started, again=True)
                        conn.reused = False
                        continue
                    except OSError:
                        pass
                self._fail(conn, type(exc).__name__)
                freed.append(conn)
                continue
            except (ValueError, IndexError) as exc:
                self._fail(conn, type(exc).__name__)
                freed.append(conn)
                continue
            if answer is not None:
                self.rec.record(conn.started, time.perf_counter(), answer[0], None, answer[1])
                freed.append(conn)
        now = time.perf_counter()
        for key in list(self.selector.get_map().values()):
            conn = key.data
            if conn.busy and conn.deadline < now:
                self._fail(conn, "TimeoutError")
                freed.append(conn)
        return freed

    def run_closed(self, concurrency: int, t_end: float) -> tuple[list[Connection], int]:
        conns = [Connection(self) for _ in range(concurrency)]
        for conn in conns:
            self._fire(conn, time.perf_counter())
        while time.perf_counter() < t_end:
            for conn in self._poll(0.05):
                self._fire(conn, time.perf_counter())
            for conn in conns:  # one that failed to connect is tried again
                if not conn.busy and conn.sock is None:
                    self._fire(conn, time.perf_counter())
        return conns, 0

    def run_open(
        self, concurrency: int, rate: float, t_start: float, t_end: float
    ) -> tuple[list[Connection], int]:
        """Requests are due every 1/rate seconds; a free connection takes the oldest due one."""
        conns = [Connection(self) for _ in range(concurrency)]
        free = list(conns)
        interval = 1.0 / rate
        k = 0  # the next request to send is due at t_start + k * interval
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            while free and t_start + k * interval <= now:
                conn = free.pop()
                self._fire(conn, t_start + k * interval)
                if not conn.busy:  # could not even send: counted as failed, free again
                    free.append(conn)
                k += 1
            wait = 0.05 if not free else max(0.0, min(0.05, t_start + k * interval - now))
            free.extend(self._poll(wait))
        # Requests due more than a second before the window closed that were never sent
        # because the server fell behind count as errors.
        last_due = math.floor((t_end - 1.0 - t_start) / interval)
        return conns, max(0, last_due - k + 1)


def main(args) -> dict:
    workload = Workload(args)
    t0 = time.perf_counter()
    t_start, t_end = t0 + args.warmup, t0 + args.warmup + args.duration
    rec = Recorder(t_start, t_end)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    driver = Driver(args, workload, rec)
    if args.mode == "closed":
        conns, not_sent = driver.run_closed(args.concurrency, t_end)
    else:
        conns, not_sent = driver.run_open(args.concurrency, args.rate, t0, t_end)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns:
        c.close()
    lat = sorted(rec.latencies)
    ok = sum(n for s, n in rec.statuses.items() if 200 <= s < 300)
    completed = len(lat)
    errors = completed - ok + sum(rec.failures.values()) + not_sent
    per_second = [rec.per_second.get(i, 0) for i in range(int(args.duration))]
    ms = 1000.0
    return {
        "scenario": args.scenario,
        "mode": args.mode,
        "concurrency": args.concurrency,
        "rate": args.rate if args.mode == "open" else None,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        # Answers that arrived inside the window, and of them the 2xx ones.
        "completed": completed,
        "ok": ok,
        "throughput_rps": completed / args.duration,
        "ok_rps": ok / args.duration,
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(rec.statuses.items())},
        "failures": dict(rec.failures),
        "not_sent": not_sent,
        "error_samples": rec.samples,
        "latency_ms": {
            "mean": (sum(lat) / completed * ms) if completed else None,
            "p50": percentile(lat, 50) * ms if lat else None,
            "p90": percentile(lat, 90) * ms if lat else None,
            "p95": percentile(lat, 95) * ms if lat else None,
            "p99": percentile(lat, 99) * ms if lat else None,
            "p99.9": percentile(lat, 99.9) * ms if lat else None,
            "max": lat[-1] * ms if lat else None,
        },
        "per_second_min": min(per_second) if per_second else None,
        "per_second_max": max(per_second) if per_second else None,
        "connections_opened": sum(c.connects for c in conns),
        "client_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host-header", default="127.0.0.1")
    p.add_argument("--token", required=True)
    p.add_argument("--scenario", choices=["purchases", "customers", "floor"], required=True)
    p.add_argument("--mode", choices=["closed", "open"], default="closed")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, default=100.0, help="open mode: requests per second")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--customers", type=int, default=1_000_000, help="seeded customers B0000001...")
    p.add_argument("--history-customers", type=int, default=100_000)
    p.add_argument("--history-read-fraction", type=float, default=0.9)
    p.add_argument("--unknown-fraction", type=float, default=0.02)
    p.add_argument("--run-id", default=str(int(time.time())))
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


if __name__ == "__main__":
    result = main(parse_args())
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
