#!/usr/bin/env python
"""Benchmarks of the integration API against the targets of the issue.

    make bench                                   # the full run (about 7 minutes)
    .venv/bin/python bench/run.py --help         # options
    .venv/bin/python bench/run.py --scenarios customers --reuse-db --duration 20

What a run does:
1. (re)creates the database `loyalty_bench`, migrates it under the production settings and
   seeds it with set-based SQL (bench/seed.sql): program rules, tiers, category multipliers,
   1,000,000 customers (80 % members), and purchase history with ledger entries and lots
   for the members among the first 100,000;
2. creates an API token with `manage.py create_api_token bench`;
3. starts gunicorn on loopback (two workers a core of the production class,
   loyalty_site.gunicorn_worker.OneThreadWorker: gthread's keep-alive, one thread a process, by
   default: see bench/RESULTS.md for why);
4. for each scenario runs bench/loadgen.py in a separate process, in phases:
   - saturation: closed loop, `--concurrency` connections, as fast as the server answers;
   - target (purchases: 1,000/s; customer reads: --read-rate, 200/s), light load (50/s) and
     70 % of saturation: open loop at a
     fixed rate, latency counted from when each request was due (so queueing shows);
5. runs `manage.py ledger_check` after the purchase load;
6. stops gunicorn and prints a report; the raw figures go to bench/out/<time>.json.

Scenarios: `purchases` (POST /api/v1/purchases, a new purchase each time, for a random one
of the million customers, 2 % for a customer never seen) and `customers`
(GET /api/v1/customers/{ref}: 90 % customers with history, 10 % any customer).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
from machine import machine  # bench/machine.py (bench/ is on sys.path: run as a script or imported)
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
VENV_BIN = ROOT / ".venv" / "bin"

TARGETS = {
    "purchases": {"throughput_rps": 1000.0, "p99_ms": 100.0},
    "customers": {"p99_ms": 20.0},
    # No target: what gunicorn and Django cost for an API request that does nothing (see loadgen).
    "floor": {},
}


def log(message: str) -> None:
    print(f"[bench {dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- Environment ----------------------------------------------------------------------


def python_bin() -> str:
    candidate = VENV_BIN / "python"
    return str(candidate) if candidate.exists() else sys.executable


def gunicorn_bin() -> str:
    candidate = VENV_BIN / "gunicorn"
    return str(candidate) if candidate.exists() else "gunicorn"


def django_env(args) -> dict:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="loyalty_site.settings.production",
        SECRET_KEY="bench-only-secret-key-not-for-production-0123456789abcdef",  # noqa: S106
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"{args.pg_url.rstrip('/')}/{args.db_name}",
        REDIS_URL=args.redis_url,
        SECURE_SSL_REDIRECT="False",
        LOG_LEVEL="WARNING",
        # The per-token limit (20,000 a minute by default, ~333/s) would cap the load below the
        # targets: raised far above it, so the limiter's Redis round trip is still measured.
        API_RATE_LIMIT_PER_MINUTE="10000000",
    )
    return env


def manage(args, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python_bin(), "manage.py", *command],
        cwd=ROOT,
        env=django_env(args),
        capture_output=True,
        text=True,
        check=check,
    )


def machine_info() -> dict:
    m = machine()
    return {
        "nproc": m["cores"],
        "cpu_model": m["cpu"],
        "memory_gib": m["memory_gib"],
        "kernel": m["kernel"],
        "python": m["python"],
    }


# --- Database -------------------------------------------------------------------------


def admin_connect(args) -> psycopg.Connection:
    return psycopg.connect(f"{args.pg_url.rstrip('/')}/postgres", autocommit=True)


def bench_connect(args) -> psycopg.Connection:
    return psycopg.connect(f"{args.pg_url.rstrip('/')}/{args.db_name}", autocommit=True)


def seed_marker(args) -> str:
    return f"bench seed v1 customers={args.customers} history={args.history_customers}"


# The tables a purchase writes (and reads back): where earlier runs leave dead rows behind.
HOT_TABLES = (
    "accounts_customer",
    "rewards_pointsaccount",
    "rewards_purchase",
    "rewards_purchaseline",
    "rewards_ledgerentry",
    "rewards_pointslot",
)


def database_refresh(args) -> dict:
    """Vacuum a reused database's hot tables first. Earlier runs leave dead row versions of the
    accounts they updated, and a PostgreSQL with autovacuum off (as the shared one on the
    benchmark machine) never clears them. A database worn by a morning of runs (~250,000
    purchases added, never vacuumed) cost 13-21 % more PostgreSQL CPU a purchase than a fresh
    one (bench/RESULTS.md, seventh round); the purchases earlier runs added stay (reported
    here), so for a capacity figure seed afresh (no --reuse-db)."""
    started = time.perf_counter()
    with bench_connect(args) as conn:
        added = conn.execute(
            "SELECT count(*) FROM rewards_purchase p JOIN rewards_integration i ON i.id = p.integration_id "
            "WHERE i.name <> 'bench-seed-history'"
        ).fetchone()[0]
        dead = conn.execute(
            "SELECT COALESCE(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            [list(HOT_TABLES)],
        ).fetchone()[0]
        for table in HOT_TABLES:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    seconds = round(time.perf_counter() - started, 1)
    log(f"vacuumed in {seconds} s: {dead:,} dead rows; earlier runs added {added:,} purchases")
    return {"vacuum_s": seconds, "dead_rows_before": int(dead), "purchases_added_by_earlier_runs": added}


def database_prepare(args) -> dict:
    """Create, migrate and seed the bench database, or reuse it when it holds the same seed."""
    with admin_connect(args) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [args.db_name],
        ).fetchone()
        if row is not None and args.reuse_db and row[0] == seed_marker(args):
            log(f"reusing database {args.db_name} ({row[0]})")
            manage(args, "migrate", "--noinput")
            return {"reused": True, **database_refresh(args)}
        log(f"creating database {args.db_name}")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db_name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db_name)))
    timings = {}
    started = time.perf_counter()
    manage(args, "migrate", "--noinput")
    timings["migrate_s"] = round(time.perf_counter() - started, 1)
    log(f"migrated in {timings['migrate_s']} s; seeding {args.customers:,} customers")
    started = time.perf_counter()
    with bench_connect(args) as conn:
        integration = conn.execute(
            "INSERT INTO rewards_integration (name, token_hash, token_prefix, is_active, created_at, "
            "failed_calls, last_failure) VALUES ('bench-seed-history', NULL, '', false, now(), 0, '') "
            "RETURNING id"
        ).fetchone()[0]
        script = (BENCH / "seed.sql").read_text()
        script = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
        values = {
            "{customers}": str(int(args.customers)),
            "{history}": str(int(args.history_customers)),
            "{integration}": str(int(integration)),
        }
        for placeholder, value in values.items():
            script = script.replace(placeholder, value)
        with conn.transaction():
            for statement in filter(None, (s.strip() for s in script.split(";"))):
                t = time.perf_counter()
                rows = conn.execute(statement).rowcount
                first_line = statement.split("\n")[0][:60]
                log(f"  {first_line:<60} {rows:>9,} rows {time.perf_counter() - t:6.1f} s")
        t = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        log(f"  VACUUM ANALYZE {time.perf_counter() - t:.1f} s")
        counts = {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[
                0
            ]
            for table in (
                "accounts_customer",
                "rewards_pointsaccount",
                "rewards_purchase",
                "rewards_ledgerentry",
                "rewards_pointslot",
            )
        }
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(args.db_name), sql.Literal(seed_marker(args))
            )
        )
    timings["seed_s"] = round(time.perf_counter() - started, 1)
    log(f"seeded in {timings['seed_s']} s: {counts}")
    return {"reused": False, **timings, "rows": counts}


def api_token(args) -> str:
    token = manage(args, "create_api_token", "bench").stdout.strip().splitlines()[-1]
    if not token.startswith("lyt_"):
        raise SystemExit(f"create_api_token printed no token: {token!r}")
    return token


def ledger_check(args) -> dict:
    started = time.perf_counter()
    result = manage(args, "ledger_check", check=False)
    output = (result.stdout + result.stderr).strip()
    return {
        "exit_code": result.returncode,
        "output": output.splitlines()[-1] if output else "",
        "seconds": round(time.perf_counter() - started, 1),
    }


def database_sizes(args) -> dict:
    with bench_connect(args) as conn:
        return {
            "database": conn.execute(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).fetchone()[0],
            "customers": conn.execute("SELECT count(*) FROM accounts_customer").fetchone()[0],
            "purchases": conn.execute("SELECT count(*) FROM rewards_purchase").fetchone()[0],
            "entries": conn.execute("SELECT count(*) FROM rewards_ledgerentry").fetchone()[0],
        }


# --- gunicorn -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """gunicorn on loopback; `spec` is `sync:5` (5 sync workers), `gthread:3x4` (3 workers × 4 threads)
    or `onethread:8` (8 workers of loyalty_site.gunicorn_worker.OneThreadWorker, the production class)."""

    CLASSES = {
        "sync": "sync",
        "gthread": "gthread",
        "onethread": "loyalty_site.gunicorn_worker.OneThreadWorker",
    }

    def __init__(self, args, spec: str):
        self.args, self.spec = args, spec
        kind, _, size = spec.partition(":")
        if kind not in self.CLASSES:
            raise SystemExit(f"unknown worker spec {spec!r}: use sync:N, gthread:NxT or onethread:N")
        workers, _, threads = size.partition("x")
        self.kind, self.workers, self.threads = kind, int(workers), int(threads or 1)
        if kind == "onethread" and self.threads != 1:
            raise SystemExit(f"onethread workers have one thread: {spec!r}")
        self.port = args.port or free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [
            gunicorn_bin(),
            "loyalty_site.wsgi",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--worker-class",
            self.CLASSES[self.kind],
            "--backlog",
            "2048",
            "--timeout",
            "120",
            "--log-level",
            "warning",
        ]
        if self.kind != "sync":
            cmd += ["--threads", str(self.threads), "--keep-alive", "10"]
        return cmd

    def start(self) -> None:
        OUT.mkdir(exist_ok=True)
        self.log_path = OUT / "gunicorn.log"
        log(f"starting gunicorn {self.spec} on 127.0.0.1:{self.port}")
        with open(self.log_path, "ab") as logfile:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=django_env(self.args),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"gunicorn did not answer /healthz within 60 s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [pid for pid, info in proc_table().items() if info[1] == self.proc.pid]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log("stopping gunicorn")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --- CPU accounting: who used the two cores during a measured window --------------------


def proc_table() -> dict[int, tuple[str, int, float, str]]:
    """pid → (comm, ppid, cpu seconds, cmdline) for every process we may read."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks, cmdline)
    return table


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / ticks, sum(values[:8]) / ticks


def cpu_split(before, after, gunicorn: Gunicorn, loadgen_pid: int, db_name: str) -> dict:
    (t0, procs0), (t1, procs1) = before, after
    wall = t1[2] - t0[2]
    groups: Counter = Counter()
    master = gunicorn.proc.pid if gunicorn.proc else -1
    for pid, (comm, ppid, cpu, cmdline) in procs1.items():
        used = cpu - (procs0[pid][2] if pid in procs0 else 0.0)
        if pid == master or ppid == master:
            groups["gunicorn"] += used
        elif pid == loadgen_pid:
            groups["load generator"] += used
        elif comm == "postgres" and f" {db_name} " in cmdline:
            groups["postgres (bench connections)"] += used
        elif comm == "postgres":
            groups["postgres (WAL writer, checkpointer, other databases)"] += used
    busy = t1[0] - t0[0]
    groups["everything else"] = max(0.0, busy - sum(groups.values()))
    return {
        "wall_s": round(wall, 1),
        "machine_busy_pct": round(100 * busy / (t1[1] - t0[1]), 1) if t1[1] > t0[1] else None,
        "cores_used": {k: round(v / wall, 2) for k, v in groups.most_common()},
    }


def background_load(seconds: float = 3.0) -> float:
    """Cores busy on the machine while the benchmark itself is idle (other people's work)."""
    busy0, total0 = machine_busy_seconds()
    time.sleep(seconds)
    busy1, total1 = machine_busy_seconds()
    return round((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1), 2)


def cpu_speed_ms() -> float:
    """Milliseconds for a fixed piece of Python work that, like a Django request, allocates
    objects and walks a few MB of memory (best of 3). On a shared virtual machine the same
    core can be much slower from one minute to the next (a busy host); a phase whose figure
    here is well above the others ran on a slower machine."""
    spin_until = time.perf_counter() + 0.3  # wake the core from idle first
    while time.perf_counter() < spin_until:
        pass
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        table = {f"key-{i}": [i, str(i)] for i in range(100_000)}
        total = sum(table[f"key-{i}"][0] for i in range(0, 100_000, 3))
        ordered = sorted(table.items(), key=lambda item: item[1][1])
        best = min(best, time.perf_counter() - started)
        del table, ordered, total
    return round(best * 1000, 1)


def wait_for_quiet(args) -> float:
    """On a shared machine, wait (up to --quiet-wait s) until others use < --quiet-cores cores."""
    deadline = time.monotonic() + args.quiet_wait
    while True:
        load = background_load(2.0)
        if load <= args.quiet_cores or time.monotonic() >= deadline:
            if load > args.quiet_cores:
                log(f"  the machine is busy ({load} cores used by others): measuring anyway")
            return load
        log(f"  waiting for a quiet machine ({load} cores used by others)")


def cpu_snapshot():
    busy, total = machine_busy_seconds()
    return (busy, total, time.monotonic()), proc_table()


def cpu_snapshot_through(seconds: float, every: float = 1.0):
    """cpu_snapshot() after `seconds`, looking at the processes every second on the way: a process
    that exits meanwhile (a database connection closed at CONN_MAX_AGE, its successor opened) keeps
    the CPU it had when last seen, instead of leaving it to "everything else"."""
    seen: dict = {}
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(every, left))
        seen.update(proc_table())
    (machine, procs) = cpu_snapshot()
    return machine, {**seen, **procs}


# --- Load phases ----------------------------------------------------------------------


def phase_run(args, gunicorn: Gunicorn, token: str, scenario: str, mode: str, **opts) -> dict:
    duration = opts.get("duration", args.duration)
    warmup = opts.get("warmup", args.warmup)
    cmd = [
        python_bin(),
        str(BENCH / "loadgen.py"),
        "--port",
        str(gunicorn.port),
        "--token",
        token,
        "--scenario",
        scenario,
        "--mode",
        mode,
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--concurrency",
        str(opts.get("concurrency", args.concurrency)),
        "--customers",
        str(args.customers),
        "--history-customers",
        str(args.history_customers),
        "--run-id",
        f"{int(time.time())}{mode[0]}{opts.get('rate', 0):.0f}",
    ]
    concurrency = opts.get("concurrency", args.concurrency)
    if mode == "open":
        cmd += ["--rate", str(opts["rate"])]
    load = f" @ {opts['rate']:.0f}/s" if mode == "open" else f", {concurrency} connections"
    label = f"{scenario} {mode}{load}"
    background = wait_for_quiet(args) if args.quiet_wait > 0 else None
    speed = cpu_speed_ms()
    log(f"phase: {label}, {warmup:g} s warm-up + {duration:g} s (cpu speed check {speed} ms)")
    profiler = None
    loadgen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(warmup)
    before = cpu_snapshot()
    if args.profile and mode == "closed":
        profiler = profile_start(args, gunicorn, scenario, duration)
    after = cpu_snapshot_through(duration)
    stdout, _ = loadgen.communicate(timeout=duration + 120)
    if loadgen.returncode != 0:
        raise SystemExit(f"load generator failed ({loadgen.returncode})")
    result = json.loads(stdout)
    result["label"] = label
    result["cpu_speed_ms_before"] = speed
    result["background_cores_before"] = background
    result["cpu_speed_ms_after"] = cpu_speed_ms()
    if profiler is not None:
        profiler.wait(timeout=60)
        summary = profile_summary(profiler.target)
        result["profile"] = {"file": str(profiler.target.relative_to(ROOT)), **summary}
        log(f"  profile: {result['profile'].get('self_time_by_package_pct')}")
    result["cpu"] = cpu_split(before, after, gunicorn, loadgen.pid, args.db_name)
    cores = result["cpu"]["cores_used"]
    rps = result["throughput_rps"]
    result["cpu_ms_per_request"] = {
        "gunicorn": round(1000 * cores.get("gunicorn", 0) / rps, 2) if rps else None,
        "postgres": round(1000 * cores.get("postgres (bench connections)", 0) / rps, 2) if rps else None,
    }
    lat = result["latency_ms"]
    log(
        f"  {result['throughput_rps']:.0f} req/s ({result['ok_rps']:.0f} ok), "
        f"p50 {fmt_ms(lat['p50'])} p95 {fmt_ms(lat['p95'])} p99 {fmt_ms(lat['p99'])} ms, "
        f"errors {result['errors']}, cpu {result['cpu']['cores_used']}, "
        f"CPU ms/request {result['cpu_ms_per_request']}, "
        f"cpu speed check after {result['cpu_speed_ms_after']} ms"
    )
    return result


def profile_start(args, gunicorn: Gunicorn, scenario: str, duration: float):
    """py-spy over the gunicorn master and its workers (needs `pip install py-spy`)."""
    py_spy = VENV_BIN / "py-spy"
    if not py_spy.exists():
        log("  --profile: py-spy is not installed in .venv; skipping the profile")
        return None
    OUT.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = OUT / f"profile-{scenario}-{gunicorn.kind}-{stamp}.txt"
    log(f"  profiling with py-spy into {target}")
    profiler = subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(gunicorn.proc.pid),
            "--subprocesses",
            "--duration",
            str(int(duration)),
            "--rate",
            "100",
            "--format",
            "raw",
            # Only samples holding the GIL: Python CPU time, not time waiting for PostgreSQL.
            "--gil",
            "--nonblocking",
            "--output",
            str(target),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    profiler.target = target
    return profiler


# Where the server's Python time goes, from py-spy's collapsed stacks: "function (path:line);..."
# with paths relative to sys.path ("django/db/models/query.py", "rewards/services.py").
PROJECT_PACKAGES = ("rewards/", "accounts/", "loyalty_site/", "analytics/", "campaigns/")
PATH_BUCKETS = [
    ("psycopg (driver: adapting parameters, reading rows)", ("psycopg/", "psycopg_binary/")),
    ("Django ORM (building SQL, making model objects)", ("django/db/",)),
    ("Django REST framework (parsing, validation, rendering)", ("rest_framework/",)),
    ("Django (handler, middleware, i18n, URLs, signals)", ("django/",)),
    ("gunicorn (HTTP parsing, worker loop)", ("gunicorn/",)),
    ("whitenoise", ("whitenoise/",)),
    ("project code (rewards, accounts, ...)", PROJECT_PACKAGES),
]


def _frame_path(frame: str) -> str:
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.rpartition(":")[0] or where


def profile_summary(path: Path, top: int = 25) -> dict:
    """Self time by package of the innermost frame, and inclusive time of the project's functions."""
    leaf: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        innermost = _frame_path(frames[-1]) if frames else ""
        bucket = next(
            (name for name, prefixes in PATH_BUCKETS if innermost.startswith(prefixes)),
            "Python standard library and C extensions",
        )
        leaf[bucket] += n
        seen = set()
        for frame in frames:
            where = _frame_path(frame)
            if where.startswith(PROJECT_PACKAGES) or where.startswith("rest_framework/views.py"):
                name = f"{frame.partition(' (')[0]} ({where})"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += n
    if not total:
        return {}
    return {
        "samples": total,
        "self_time_by_package_pct": {k: round(100 * v / total, 1) for k, v in leaf.most_common()},
        "inclusive_functions_pct": {k: round(100 * v / total, 1) for k, v in inclusive.most_common(top)},
    }


def scenario_run(args, gunicorn: Gunicorn, token: str, scenario: str) -> dict:
    phases = {"saturation": phase_run(args, gunicorn, token, scenario, "closed")}
    saturated = phases["saturation"]["ok_rps"]
    if scenario == "purchases" and args.rate_duration > 0:
        phases["target"] = phase_run(
            args,
            gunicorn,
            token,
            scenario,
            "open",
            rate=args.purchase_rate,
            duration=args.rate_duration,
            concurrency=args.open_concurrency,
        )
    if scenario == "customers" and args.rate_duration > 0 and args.read_rate > 0:
        # The read target is a latency target: measured at a fixed rate below saturation, so
        # the p99 is the service's and not the queue's.
        phases["target"] = phase_run(
            args,
            gunicorn,
            token,
            scenario,
            "open",
            rate=args.read_rate,
            duration=args.rate_duration,
            concurrency=args.open_concurrency,
        )
    if args.rate_duration > 0 and args.light_rate > 0:
        phases["light load"] = phase_run(
            args,
            gunicorn,
            token,
            scenario,
            "open",
            rate=args.light_rate,
            duration=args.rate_duration,
            concurrency=args.open_concurrency,
        )
    if args.rate_duration > 0 and saturated > 0:
        phases["70% of saturation"] = phase_run(
            args,
            gunicorn,
            token,
            scenario,
            "open",
            rate=round(0.7 * saturated),
            duration=args.rate_duration,
            concurrency=args.open_concurrency,
        )
    return phases


# --- Report ---------------------------------------------------------------------------


def fmt_ms(value) -> str:
    return "-" if value is None else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def verdict(scenario: str, phase: dict) -> str:
    target = TARGETS[scenario]
    notes = []
    p99 = phase["latency_ms"]["p99"]
    if "throughput_rps" in target:
        ok = phase["ok_rps"] >= 0.99 * target["throughput_rps"]
        notes.append(
            f"throughput {'met' if ok else 'MISSED'} "
            f"({phase['ok_rps']:.0f}/s vs ≥ {target['throughput_rps']:.0f}/s)"
        )
    if p99 is not None and "p99_ms" in target:
        ok = p99 <= target["p99_ms"]
        notes.append(f"p99 {'met' if ok else 'MISSED'} ({fmt_ms(p99)} vs ≤ {target['p99_ms']:.0f} ms)")
    return "; ".join(notes)


def report(results: dict) -> str:
    lines = [
        f"Machine: {results['machine']['nproc']} × {results['machine']['cpu_model']}, "
        f"{results['machine']['memory_gib']} GiB; gunicorn {results['gunicorn']['spec']} "
        f"({' '.join(results['gunicorn']['command'][1:])}); "
        f"background load before the run: {results['background_cores_before']} cores",
        "",
        "| scenario | phase | load | req/s | ok/s | p50 ms | p95 ms | p99 ms | max ms | errors | "
        "cores: gunicorn / postgres / client / other | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, phases in results["scenarios"].items():
        for name, phase in phases.items():
            lat = phase["latency_ms"]
            load = (
                f"closed, {phase['concurrency']} connections"
                if phase["mode"] == "closed"
                else f"open, {phase['rate']:.0f}/s"
            )
            cores = phase["cpu"]["cores_used"]
            other = cores.get("everything else", 0) + cores.get(
                "postgres (WAL writer, checkpointer, other databases)", 0
            )
            lines.append(
                f"| {scenario} | {name} | {load} | {phase['throughput_rps']:.0f} | {phase['ok_rps']:.0f} | "
                f"{fmt_ms(lat['p50'])} | {fmt_ms(lat['p95'])} | {fmt_ms(lat['p99'])} | "
                f"{fmt_ms(lat['max'])} | {phase['errors']} | "
                f"{cores.get('gunicorn', 0):.2f} / {cores.get('postgres (bench connections)', 0):.2f} / "
                f"{cores.get('load generator', 0):.2f} / {other:.2f} | {verdict(scenario, phase)} |"
            )
    lines += [
        "",
        "| scenario | phase | CPU ms per request: gunicorn / postgres | speed check before → after (ms) |",
        "|---|---|---|---|",
    ]
    for scenario, phases in results["scenarios"].items():
        for name, phase in phases.items():
            per = phase["cpu_ms_per_request"]
            lines.append(
                f"| {scenario} | {name} | {per['gunicorn']} / {per['postgres']} | "
                f"{phase['cpu_speed_ms_before']} → {phase['cpu_speed_ms_after']} |"
            )
    if results.get("ledger_check"):
        lc = results["ledger_check"]
        lines += ["", f"ledger_check after the purchase load: exit {lc['exit_code']}: {lc['output']}"]
    return "\n".join(lines)


# --- Main -----------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--scenarios",
        default="purchases,customers",
        help="comma-separated: purchases, customers, floor (default: purchases,customers)",
    )
    p.add_argument("--duration", type=float, default=45, help="seconds of each saturation phase (45)")
    p.add_argument(
        "--rate-duration",
        type=float,
        default=30,
        help="seconds of each fixed-rate phase (30); 0 skips the fixed-rate phases",
    )
    p.add_argument("--warmup", type=float, default=5, help="seconds before each phase that are not counted")
    p.add_argument("--concurrency", type=int, default=16, help="connections of the saturation phases (16)")
    p.add_argument(
        "--open-concurrency", type=int, default=64, help="most requests in flight in fixed-rate phases (64)"
    )
    p.add_argument("--purchase-rate", type=float, default=1000, help="target rate of purchases/s (1000)")
    p.add_argument(
        "--read-rate",
        type=float,
        default=200,
        help="fixed rate of the customer-read target phase, req/s (200); 0 skips it",
    )
    p.add_argument(
        "--light-rate", type=float, default=50, help="rate of the light-load phase, req/s (50); 0 skips it"
    )
    p.add_argument("--customers", type=int, default=1_000_000, help="customers to seed (1,000,000)")
    p.add_argument(
        "--history-customers",
        type=int,
        default=100_000,
        help="the first N customers get purchase history, entries and lots; reads go mostly to them",
    )
    p.add_argument(
        "--workers",
        default=f"onethread:{2 * (os.cpu_count() or 1)}",
        help="gunicorn workers: sync:N, gthread:NxT or onethread:N (the default, onethread with two "
        "workers a core as in the README's production line: the production worker class, gthread's "
        "keep-alive served on one thread a process)",
    )
    p.add_argument(
        "--compare-workers",
        default="",
        help="instead of the full run: run the saturation phases under each spec, e.g. "
        "'sync:3,sync:5,gthread:2x4,gthread:3x4'",
    )
    p.add_argument("--reuse-db", action="store_true", help="keep the bench DB if it holds the same seed")
    p.add_argument("--profile", action="store_true", help="record the saturation phases with py-spy")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=90,
        help="before each phase, wait up to this many seconds for other processes to calm down (90)",
    )
    p.add_argument("--quiet-cores", type=float, default=0.25, help="what counts as calm: cores busy (0.25)")
    p.add_argument("--db-name", default="loyalty_bench")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    p.add_argument("--port", type=int, default=0, help="gunicorn port (default: a free one)")
    args = p.parse_args(argv)
    if not 1 <= args.customers <= 9_999_999:
        p.error("--customers must be between 1 and 9,999,999 (refs are B + 7 digits)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in TARGETS:
            raise SystemExit(f"unknown scenario {s!r}")
    started = time.perf_counter()
    results: dict = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": machine_info(),
        "database": database_prepare(args),
    }
    token = api_token(args)
    results["background_cores_before"] = background_load()
    log(f"background load before the run: {results['background_cores_before']} cores busy")
    specs = [s.strip() for s in args.compare_workers.split(",") if s.strip()] or [args.workers]
    runs = []
    for spec in specs:
        gunicorn = Gunicorn(args, spec)
        run = {"gunicorn": {"spec": spec, "command": gunicorn.command()}, "scenarios": {}}
        try:
            gunicorn.start()
            for scenario in scenarios:
                if args.compare_workers:
                    run["scenarios"][scenario] = {
                        "saturation": phase_run(args, gunicorn, token, scenario, "closed")
                    }
                else:
                    run["scenarios"][scenario] = scenario_run(args, gunicorn, token, scenario)
                if scenario == "purchases":
                    log("running manage.py ledger_check")
                    run["ledger_check"] = ledger_check(args)
                    log(f"  {run['ledger_check']}")
        finally:
            gunicorn.stop()
        runs.append(run)
    results["database"]["after"] = database_sizes(args)
    results["runs"] = runs
    results["total_s"] = round(time.perf_counter() - started, 1)
    OUT.mkdir(exist_ok=True)
    out_file = OUT / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out_file.write_text(json.dumps(results, indent=2) + "\n")
    print()
    for run in runs:
        print(report({**results, **run}))
        print()
    print(f"Raw results: {out_file.relative_to(ROOT)}; total {results['total_s']:.0f} s")
    failed_check = any(run.get("ledger_check", {}).get("exit_code", 0) != 0 for run in runs)
    return 1 if failed_check else 0


if __name__ == "__main__":
    sys.exit(main())
