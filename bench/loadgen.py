"""HTTP load generator for the integration API: standard library only (asyncio, raw HTTP/1.1).

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
import asyncio
import datetime as dt
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from decimal import Decimal

CATEGORIES = ["coffee-beans", "pastry", "equipment", "tea", ""]


class _Client(asyncio.Protocol):
    """The answers of one connection, parsed as bytes arrive: one future per request and no
    stream reads (the generator shares the two cores with the server it measures, so its own
    CPU a request is kept low)."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._answer()

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed before a response"))

    def _answer(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
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
            return
        payload = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.waiter.set_result((int(head[0].split(b" ", 2)[1]), payload, close))


class Connection:
    """One keep-alive HTTP/1.1 connection that reconnects when the server closes it."""

    def __init__(self, host: str, port: int, host_header: str):
        self.host, self.port, self.host_header = host, port, host_header
        self.client: _Client | None = None
        self.connects = 0

    async def _connect(self) -> None:
        _transport, self.client = await asyncio.get_running_loop().create_connection(
            _Client, self.host, self.port
        )
        self.connects += 1

    def close(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()
        self.client = None

    async def request(self, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        for attempt in (1, 2):
            reused = self.client is not None and not self.client.lost
            if not reused:
                self.close()
                await self._connect()
            client = self.client
            client.waiter = asyncio.get_running_loop().create_future()
            client.transport.write(raw)
            try:
                status, payload, close = await client.waiter
                break
            except ConnectionError:
                # The server closed an idle kept-alive connection before reading the request:
                # nothing was processed, so sending it again on a fresh connection is safe.
                self.close()
                if not reused or attempt == 2:
                    raise
        if close:
            self.close()
        return status, payload


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


async def _one(conn: Connection, workload: Workload, rec: Recorder, started: float, timeout: float):
    method, path, headers, body = workload.next()
    try:
        async with asyncio.timeout(timeout):  # unlike wait_for, no task per request
            status, payload = await conn.request(method, path, headers, body)
        rec.record(started, time.perf_counter(), status, None, payload)
    except (
        TimeoutError,
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ValueError,
        IndexError,
    ) as exc:
        conn.close()
        rec.record(started, time.perf_counter(), None, type(exc).__name__, b"")


async def run_closed(args, workload: Workload, rec: Recorder, t_end: float):
    async def loop(conn: Connection):
        while time.perf_counter() < t_end:
            await _one(conn, workload, rec, time.perf_counter(), args.timeout)

    conns = [Connection(args.host, args.port, args.host_header) for _ in range(args.concurrency)]
    await asyncio.gather(*(loop(c) for c in conns))
    return conns, 0


async def run_open(args, workload: Workload, rec: Recorder, t_start: float, t_end: float):
    """Requests are due every 1/rate seconds; a free connection takes the oldest due one."""
    due: asyncio.Queue[float] = asyncio.Queue()
    interval = 1.0 / args.rate
    not_sent = 0

    async def schedule():
        k = 0
        while True:
            at = t_start + k * interval
            if at >= t_end:
                return
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Release every request that is due by now (the loop may wake late).
            now = time.perf_counter()
            while t_start + k * interval <= now and t_start + k * interval < t_end:
                due.put_nowait(t_start + k * interval)
                k += 1

    async def loop(conn: Connection):
        while True:
            at = await due.get()
            if at is None:
                return
            await _one(conn, workload, rec, at, args.timeout)

    conns = [Connection(args.host, args.port, args.host_header) for _ in range(args.concurrency)]
    workers = [asyncio.create_task(loop(c)) for c in conns]
    await schedule()
    # Requests still queued more than a second after they were due when the window closes
    # were never sent because the server fell behind: they count as errors.
    while not due.empty():
        if due.get_nowait() < t_end - 1.0:
            not_sent += 1
    for _ in workers:
        due.put_nowait(None)
    await asyncio.wait(workers, timeout=args.timeout)
    return conns, not_sent


async def main_async(args) -> dict:
    workload = Workload(args)
    t0 = time.perf_counter()
    t_start, t_end = t0 + args.warmup, t0 + args.warmup + args.duration
    rec = Recorder(t_start, t_end)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.mode == "closed":
        conns, not_sent = await run_closed(args, workload, rec, t_end)
    else:
        conns, not_sent = await run_open(args, workload, rec, t0, t_end)
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
    result = asyncio.run(main_async(parse_args()))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
