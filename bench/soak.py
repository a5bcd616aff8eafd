#!/usr/bin/env python
"""Soak: mixed traffic against gunicorn on PostgreSQL for a long while, zero errors, and the
ledger consistent afterwards (issue 8).

    .venv/bin/python bench/soak.py                     # 10 minutes at 70 % of the measured peak
    .venv/bin/python bench/soak.py --minutes 2 --reuse-db
    .venv/bin/python bench/soak.py --rate 80           # a fixed rate instead of measuring the peak

What a run does (the machinery of bench/run.py and bench/loadgen.py):
1. creates and seeds its own database `loyalty_soak` (bench/seed.sql: 200,000 customers, the
   first 50,000 with purchase history, lots and balances), adds one reward of 100 points and
   an API token;
2. starts gunicorn (sync workers) with the production settings on loopback;
3. measures the peak of the mix: a closed loop of 16 connections for --peak-seconds;
4. soaks: an open loop at --load x that peak for --minutes, from a separate process
   (this script with --load-only), a new request due every 1/rate seconds whatever the
   server does, latency counted from when each was due;
5. runs `manage.py ledger_check`, samples the gunicorn workers' memory at start and end, and
   prints a report; the raw figures go to bench/out/soak-<time>.json.

The mix, per request: earn 40 % (POST /purchases, a member with history, 1-3 lines), read 35 %
(GET /customers/{ref}), redeem 15 % (POST /customers/{ref}/redemptions with an
Idempotency-Key, for a member whose balance the load generator knows covers the reward), refund
10 % (POST /purchases/{id}/refunds, half of a purchase made earlier in the soak). A member has
at most one request in flight, so the balance the generator tracks from the answers is exact
and every request is valid: any answer other than 2xx is an error, and a run passes only with
zero errors and a clean ledger_check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import subprocess
import sys
import time
from collections import Counter, deque
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402  (bench/ is not a package)
import run as bench  # noqa: E402

MIX = {"earn": 0.40, "read": 0.35, "redeem": 0.15, "refund": 0.10}
REWARD_COST = 100
CATEGORIES = ["coffee-beans", "pastry", "equipment", ""]


# --- The workload (in the load process) ------------------------------------------------


class Mix:
    """Chooses each request and learns from each answer."""

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        # Members with history: customer i is a member unless i is a multiple of 5.
        self.members = [f"B{i:07d}" for i in range(1, args.history_customers + 1) if i % 5]
        self.balance: dict[str, int] = {}
        self.busy: set[str] = set()
        self.refundable: deque[tuple[str, str, Decimal]] = deque()
        self.seq = 0
        self.auth = {"Authorization": f"Bearer {args.token}", "Accept": "application/json"}
        self.substituted: Counter = Counter()

    def _free_member(self) -> str:
        while True:
            ref = self.rng.choice(self.members)
            if ref not in self.busy:
                return ref

    def _rich_member(self) -> str | None:
        for _ in range(50):
            ref = self.rng.choice(self.members)
            if ref not in self.busy and self.balance.get(ref, -1) >= REWARD_COST:
                return ref
        return None

    def _refund_target(self) -> tuple[str, str, Decimal] | None:
        for _ in range(len(self.refundable)):
            target = self.refundable.popleft()
            if target[1] not in self.busy:
                return target
            self.refundable.append(target)
        return None

    def next(self):
        """(kind, customer, method, path, headers, body)."""
        self.seq += 1
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        run_id = self.args.run_id
        json_headers = {**self.auth, "Content-Type": "application/json"}
        if kind == "redeem":
            ref = self._rich_member()
            if ref is None:
                self.substituted["redeem"] += 1
                kind = "earn"
            else:
                body = json.dumps({"reward": self.args.reward_id}).encode()
                headers = {**json_headers, "Idempotency-Key": f"soak-{run_id}-{self.seq}"}
                return kind, ref, "POST", f"/api/v1/customers/{ref}/redemptions", headers, body
        if kind == "refund":
            target = self._refund_target()
            if target is None:
                self.substituted["refund"] += 1
                kind = "earn"
            else:
                external_id, ref, amount = target
                half = (amount / 2).quantize(Decimal("0.01"))
                body = json.dumps({"refund_id": f"r-{external_id}", "amount": str(half)}).encode()
                return kind, ref, "POST", f"/api/v1/purchases/{external_id}/refunds", json_headers, body
        ref = self._free_member()
        if kind == "read":
            return kind, ref, "GET", f"/api/v1/customers/{ref}", self.auth, b""
        items = []
        for _ in range(self.rng.randint(1, 3)):
            cents = self.rng.randint(2000, 30000)
            items.append(
                {
                    "sku": f"SKU-{self.rng.randint(1, 500)}",
                    "category": self.rng.choice(CATEGORIES),
                    "quantity": "1",
                    "amount": str(Decimal(cents) / 100),
                }
            )
        body = {
            "external_id": f"soak-{run_id}-{self.seq}",
            "customer": ref,
            "amount": str(sum(Decimal(i["amount"]) for i in items)),
            "currency": "DKK",
            "occurred_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "items": items,
        }
        return "earn", ref, "POST", "/api/v1/purchases", json_headers, json.dumps(body).encode()

    def learn(self, kind: str, ref: str, status: int, payload: bytes, request_body: bytes) -> None:
        if not 200 <= status < 300:
            self.balance.pop(ref, None)  # unknown again
            return
        data = json.loads(payload)
        if kind == "read":
            self.balance[ref] = data["balance"]
        elif kind == "earn":
            if data["balance"] is not None:
                self.balance[ref] = data["balance"]
            sent = json.loads(request_body)
            if len(self.refundable) < 100_000:
                self.refundable.append((sent["external_id"], ref, Decimal(sent["amount"])))
        elif kind in ("redeem", "refund") and data.get("balance") is not None:
            self.balance[ref] = data["balance"]


class Stats:
    def __init__(self, started: float):
        self.started = started
        self.latency: dict[str, list[float]] = {k: [] for k in MIX}
        self.statuses: Counter = Counter()
        self.by_kind: Counter = Counter()
        self.failures: Counter = Counter()
        self.errors = 0
        self.samples: list[str] = []
        self.minutes: dict[int, dict] = {}

    def record(self, kind: str, due: float, finished: float, status: int | None, error: str | None, body):
        minute = int((finished - self.started) // 60)
        bucket = self.minutes.setdefault(minute, {"requests": 0, "errors": 0, "latencies": []})
        bucket["requests"] += 1
        self.by_kind[kind] += 1
        if error is not None or not 200 <= status < 300:
            self.errors += 1
            bucket["errors"] += 1
            if error is not None:
                self.failures[error] += 1
            else:
                self.statuses[status] += 1
            if len(self.samples) < 10:
                text = (body or b"")[:300].decode(errors="replace")
                self.samples.append(f"{kind} {status or error} {text}")
            return
        self.statuses[status] += 1
        self.latency[kind].append(finished - due)
        bucket["latencies"].append(finished - due)


def _ms(values: list[float], p: float) -> float | None:
    value = loadgen.percentile(sorted(values), p)
    return round(value * 1000, 1) if value is not None else None


async def load(args) -> dict:
    """Closed loop (peak) or open loop at --rate for --seconds; one JSON summary."""
    mix = Mix(args)
    started = time.perf_counter()
    stats = Stats(started)
    end = started + args.seconds
    not_sent = 0

    async def one(conn: loadgen.Connection, due: float):
        kind, ref, method, path, headers, body = mix.next()
        mix.busy.add(ref)
        try:
            status, payload = await asyncio.wait_for(conn.request(method, path, headers, body), args.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            conn.close()
            stats.record(kind, due, time.perf_counter(), None, type(exc).__name__, b"")
            mix.balance.pop(ref, None)
        else:
            stats.record(kind, due, time.perf_counter(), status, None, payload)
            mix.learn(kind, ref, status, payload, body)
        finally:
            mix.busy.discard(ref)

    conns = [loadgen.Connection(args.host, args.port, args.host) for _ in range(args.concurrency)]
    if args.mode == "closed":

        async def loop(conn):
            while time.perf_counter() < end:
                await one(conn, time.perf_counter())

        await asyncio.gather(*(loop(c) for c in conns))
    else:
        due_queue: asyncio.Queue = asyncio.Queue()
        interval = 1.0 / args.rate

        async def worker(conn):
            while (due := await due_queue.get()) is not None:
                await one(conn, due)

        tasks = [asyncio.create_task(worker(c)) for c in conns]
        k = 0
        while (at := started + k * interval) < end:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            while (at := started + k * interval) <= now and at < end:
                due_queue.put_nowait(at)
                k += 1
        # Requests still waiting more than a second after they were due when the time is up:
        # the server fell behind; they count as errors.
        while not due_queue.empty():
            if due_queue.get_nowait() < end - 1.0:
                not_sent += 1
        for _ in tasks:
            due_queue.put_nowait(None)
        await asyncio.wait(tasks, timeout=args.timeout + 5)
    for c in conns:
        c.close()
    elapsed = time.perf_counter() - started
    everything = [v for values in stats.latency.values() for v in values]
    ok = sum(n for s, n in stats.statuses.items() if 200 <= s < 300)
    return {
        "mode": args.mode,
        "rate": args.rate if args.mode == "open" else None,
        "seconds": round(elapsed, 1),
        "requests": sum(stats.by_kind.values()),
        "ok": ok,
        "ok_rps": round(ok / args.seconds, 1),
        "errors": stats.errors + not_sent,
        "not_sent": not_sent,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "failures": dict(stats.failures),
        "error_samples": stats.samples,
        "by_kind": dict(stats.by_kind),
        "substituted_by_earn": dict(mix.substituted),
        "latency_ms": {
            kind: {"p50": _ms(v, 50), "p99": _ms(v, 99), "max": _ms(v, 100)}
            for kind, v in [("all", everything), *stats.latency.items()]
        },
        "per_minute": [
            {
                "minute": m,
                "requests": b["requests"],
                "errors": b["errors"],
                "p50_ms": _ms(b["latencies"], 50),
                "p99_ms": _ms(b["latencies"], 99),
            }
            for m, b in sorted(stats.minutes.items())
        ],
    }


# --- The run (in the orchestrating process) -------------------------------------------


def log(message: str) -> None:
    print(f"[soak {dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def reward_create(args) -> int:
    code = (
        "from rewards.models import Reward; r, _ = Reward.objects.get_or_create("
        f"name='Soak coffee', defaults={{'cost_points': {REWARD_COST}}}); print(r.pk)"
    )
    return int(bench.manage(args, "shell", "-c", code).stdout.strip().splitlines()[-1])


def worker_memory_mib(gunicorn: bench.Gunicorn) -> list[float]:
    sizes = []
    for pid in gunicorn.worker_pids():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    sizes.append(round(int(line.split()[1]) / 1024, 1))
    return sorted(sizes)


def load_phase(
    args, gunicorn, token: str, reward_id: int, mode: str, seconds: float, rate: float = 0
) -> dict:
    cmd = [
        bench.python_bin(), __file__, "--load-only", "--port", str(gunicorn.port), "--token", token,
        "--reward-id", str(reward_id), "--mode", mode, "--seconds", str(seconds), "--rate", str(rate),
        "--concurrency", str(args.concurrency if mode == "closed" else args.open_concurrency),
        "--history-customers", str(args.history_customers), "--run-id", f"{int(time.time())}{mode[0]}",
        "--seed", str(args.seed),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    if result.returncode != 0:
        raise SystemExit(f"the load process failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def report(results: dict) -> str:
    soak = results["soak"]
    lat = soak["latency_ms"]
    lines = [
        f"Soak {results['date']}: {soak['seconds'] / 60:.1f} min at {soak['rate']:.0f} req/s "
        f"({results['load_fraction']:.0%} of the measured peak {results['peak']['ok_rps']:.0f} req/s), "
        f"gunicorn {results['workers']}",
        f"  requests {soak['requests']:,}, ok {soak['ok']:,}, errors {soak['errors']} "
        f"(not sent {soak['not_sent']}), by kind {soak['by_kind']}, "
        f"substituted by earn {soak['substituted_by_earn']}",
        "  latency from due time, ms: "
        + ", ".join(f"{k} p50 {v['p50']} p99 {v['p99']} max {v['max']}" for k, v in lat.items()),
        "  per minute (requests / errors / p99 ms): "
        + ", ".join(f"{m['requests']}/{m['errors']}/{m['p99_ms']}" for m in soak["per_minute"]),
        f"  gunicorn worker memory MiB: start {results['memory_mib']['start']}, "
        f"end {results['memory_mib']['end']}",
        f"  ledger_check: exit {results['ledger_check']['exit_code']} ({results['ledger_check']['output']})",
        f"  machine: {results['machine']}; others' load before: {results['background_cores_before']} cores",
        f"  verdict: {'PASS' if results['passed'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.load_only:
        json.dump(asyncio.run(load(args)), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    results: dict = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": bench.machine_info(),
        "workers": args.workers,
        "load_fraction": args.load,
    }
    db_args = SimpleNamespace(
        pg_url=args.pg_url,
        db_name=args.db_name,
        redis_url=args.redis_url,
        reuse_db=args.reuse_db,
        customers=args.customers,
        history_customers=args.history_customers,
        port=0,
    )
    results["database"] = bench.database_prepare(db_args)
    token = bench.api_token(db_args)
    reward_id = reward_create(db_args)
    results["background_cores_before"] = bench.background_load()
    gunicorn = bench.Gunicorn(db_args, args.workers)
    try:
        gunicorn.start()
        if args.rate:
            results["peak"] = {"ok_rps": args.rate / args.load, "given": True}
        else:
            log(f"peak of the mix: closed loop, {args.concurrency} connections, {args.peak_seconds} s")
            results["peak"] = load_phase(args, gunicorn, token, reward_id, "closed", args.peak_seconds)
            log(f"  peak {results['peak']['ok_rps']} req/s ok, errors {results['peak']['errors']}")
        rate = round(results["peak"]["ok_rps"] * args.load, 1)
        results["memory_mib"] = {"start": worker_memory_mib(gunicorn)}
        log(f"soaking for {args.minutes} min at {rate} req/s")
        results["soak"] = load_phase(args, gunicorn, token, reward_id, "open", args.minutes * 60, rate)
        results["memory_mib"]["end"] = worker_memory_mib(gunicorn)
    finally:
        gunicorn.stop()
    log("running manage.py ledger_check")
    results["ledger_check"] = bench.ledger_check(db_args)
    results["database"]["after"] = bench.database_sizes(db_args)
    results["passed"] = results["soak"]["errors"] == 0 and results["ledger_check"]["exit_code"] == 0
    bench.OUT.mkdir(exist_ok=True)
    out_file = bench.OUT / f"soak-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out_file.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"Raw results: {out_file.relative_to(bench.ROOT)}")
    return 0 if results["passed"] else 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10, help="length of the soak (10)")
    p.add_argument("--load", type=float, default=0.7, help="fraction of the measured peak to soak at (0.7)")
    p.add_argument("--rate", type=float, default=0, help="soak at this rate (req/s); no peak measured")
    p.add_argument("--peak-seconds", type=float, default=30, help="length of the peak measurement (30)")
    p.add_argument("--concurrency", type=int, default=16, help="connections of the peak measurement (16)")
    p.add_argument("--open-concurrency", type=int, default=64, help="most requests in flight (64)")
    p.add_argument("--workers", default="sync:5", help="gunicorn workers: sync:N or gthread:NxT (sync:5)")
    p.add_argument("--customers", type=int, default=200_000)
    p.add_argument("--history-customers", type=int, default=50_000)
    p.add_argument("--reuse-db", action="store_true", help="keep the soak DB if it holds the same seed")
    p.add_argument("--db-name", default="loyalty_soak")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    p.add_argument("--seed", type=int, default=8)
    # Used by the load process this script starts.
    p.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument("--reward-id", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["closed", "open"], default="open", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=60, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=30, help=argparse.SUPPRESS)
    p.add_argument("--run-id", default=str(int(time.time())), help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
