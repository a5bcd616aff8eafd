#!/usr/bin/env python
"""Benchmark of the purchase history import (issue 3: history-only ≥ 50,000 rows/s,
`--award-points` ≥ 10,000 rows/s, compared with PostgreSQL's own COPY of the same rows).

    make bench-imports                                  # the full run (about 5 minutes)
    .venv/bin/python bench/imports.py --help            # options
    .venv/bin/python bench/imports.py --rows 200000 --phases history,rerun

What a run does:
1. (re)creates the template database `loyalty_bench_imports_seed`, migrates it and seeds it
   with set-based SQL: program rules (expiry 24 months, referral bonuses), three tiers,
   category multipliers, a promotion for everyone and one for a list of customers,
   `--customers` customers B0000001.. (80 % members, enrolled over the last 30 months, so
   that part of their history predates enrolment; 2 % referred by another member; 1 % in
   points debt from a clawback). Kept between runs while the seed is the same (`--reuse-seed`).
2. writes the CSV (`--rows` rows, header `customer,occurred_at,amount,external_id,currency,
   category`): in time order over the last 2 years, 85 % of rows for existing customers,
   15 % for `--new-customers` references never seen, 75 % with a category, 90 % with an
   external id (the rest get one from their content), half with the currency;
3. each phase runs the exact command `python manage.py import_purchases FILE [--award-points]`
   in its own process against a fresh copy of the template (`loyalty_bench_imports`):
   - history: history only; rerun: the same file again (adds nothing);
   - award: `--award-points` on a fresh copy; award-rerun: the same again;
   - copy: PostgreSQL's COPY of the same file into a bare table (the ceiling), and into the
     same table with the indexes of rewards_purchase (what index upkeep costs);
4. prints rows/s, wall time, CPU seconds of the import process and of its PostgreSQL backend
   (from /proc, sampled while it runs), the load average, and the ratio to the COPY ceiling;
   `manage.py ledger_check` after the award phases. JSON goes to bench/out/imports-<time>.json.

Never touches the other benchmarks' databases (loyalty_bench, loyalty_bench_analytics).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from machine import machine  # bench/machine.py: the scripts run from bench/
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = (
    str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
)
SEED_VERSION = 1
TARGETS = {"history": 50_000.0, "award": 10_000.0}
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench imports {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def connect(args, db: str) -> psycopg.Connection:
    return psycopg.connect(f"{args.pg}/{db}", autocommit=True)


def django_env(args, db: str) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_site.settings.production",
        "SECRET_KEY": "bench-only-secret-key-not-for-production-0123456789abcdef",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": f"{args.pg}/{db}",
        "REDIS_URL": args.redis,
        "SECURE_SSL_REDIRECT": "False",
        "LOG_LEVEL": "WARNING",
    }


def manage(args, db: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "manage.py", *command], cwd=ROOT, env=django_env(args, db), capture_output=True, text=True
    )


# --- The seed ---------------------------------------------------------------------------

SEED_SQL = """
INSERT INTO rewards_programrules
    (id, points_per_unit, minimum_spend, expiry_months, signup_bonus, birthday_bonus,
     referral_bonus_referrer, referral_bonus_referee, updated_at)
VALUES (1, 1.00, 10.00, 24, 0, 50, 100, 50, now());

INSERT INTO rewards_tier (code, name, name_translations, min_qualifying_spend, multiplier) VALUES
    ('bronze', 'Bronze', '{}', 0, 1.00), ('silver', 'Silver', '{}', 2000, 1.25),
    ('gold', 'Gold', '{}', 5000, 2.00);

INSERT INTO rewards_categorymultiplier (category, multiplier, is_active) VALUES
    ('coffee-beans', 2.00, true), ('equipment', 0.50, true), ('tea', 1.50, false);

INSERT INTO rewards_promotion (name, multiplier, starts_at, ends_at, is_active, source) VALUES
    ('Double days', 2.00, now() - interval '200 days', now() - interval '186 days', true, ''),
    ('Win-back', 3.00, now() - interval '120 days', now() - interval '90 days', true, 'campaign:1');

INSERT INTO accounts_customer
    (external_ref, email, first_name, last_name, birthday, language, time_zone,
     marketing_consent, marketing_consent_changed_at, enrolled_at, referral_code,
     created_at, referred_by_id, user_id, closure_requested_at)
SELECT 'B' || lpad(i::text, 7, '0'), 'b' || i || '@bench.invalid', 'Bench', 'Customer ' || i,
       DATE '1950-01-01' + (i * 13) % 20000, (ARRAY['en', 'da', 'sv', 'ru', 'th'])[1 + (i / 5) % 5],
       'Europe/Copenhagen', i % 3 = 0, NULL,
       CASE WHEN i % 5 <> 0 THEN now() - make_interval(days => (i * 7919) % 900, hours => i % 24) END,
       'BN' || i, now() - interval '1000 days', NULL, NULL, NULL
FROM generate_series(1, {customers}) AS i;

-- 2 % of members were referred by the member before them (who is a member too).
UPDATE accounts_customer c SET referred_by_id = r.id
FROM accounts_customer r
WHERE c.enrolled_at IS NOT NULL AND c.id % 50 = 7 AND r.id = c.id - 1 AND r.enrolled_at IS NOT NULL;

INSERT INTO rewards_promotion_customers (promotion_id, customer_id)
SELECT p.id, c.id FROM rewards_promotion p, accounts_customer c
WHERE p.name = 'Win-back' AND c.id % 10 = 3;

INSERT INTO rewards_pointsaccount (customer_id, balance, tier_id, tier_changed_at, created_at, updated_at)
SELECT c.id, 0, (SELECT id FROM rewards_tier WHERE code = 'bronze'), c.enrolled_at, c.enrolled_at,
       c.enrolled_at
FROM accounts_customer c WHERE c.enrolled_at IS NOT NULL;

-- 1 % of members owe points: a refund clawed back points they had spent.
INSERT INTO rewards_ledgerentry
    (kind, points, balance_after, created_at, idempotency_key, explanation, reason, account_id)
SELECT 'clawback', -30 - a.customer_id % 40, -30 - a.customer_id % 40, a.created_at + interval '1 day',
       'bench:debt:' || a.customer_id, '[{"code": "clawback", "refund": "30.00", "purchase": "x"}]', '',
       a.customer_id
FROM rewards_pointsaccount a WHERE a.customer_id % 100 = 11;

UPDATE rewards_pointsaccount a SET balance = e.points
FROM rewards_ledgerentry e WHERE e.account_id = a.customer_id AND e.idempotency_key LIKE 'bench:debt:%';
"""


def marker(args) -> str:
    return f"bench imports v{SEED_VERSION} customers={args.customers}"


def seed_prepare(args) -> dict:
    """The template database: created, migrated and seeded, or kept when it holds the same seed."""
    with connect(args, "postgres") as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [args.seed_db]
        ).fetchone()
        if row is not None and args.reuse_seed and row[0] == marker(args):
            log(f"reusing {args.seed_db} ({row[0]}); migrating")
            done = manage(args, args.seed_db, "migrate", "--noinput", "-v0")
            if done.returncode:
                raise SystemExit(done.stderr)
            return {"reused": True}
        log(f"creating {args.seed_db}")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.seed_db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.seed_db)))
    done = manage(args, args.seed_db, "migrate", "--noinput", "-v0")
    if done.returncode:
        raise SystemExit(done.stderr)
    started = time.perf_counter()
    with connect(args, args.seed_db) as conn:
        with conn.transaction():
            for statement in filter(None, (s.strip() for s in SEED_SQL.split(";"))):
                conn.execute(statement.replace("{customers}", str(int(args.customers))))
        conn.execute("VACUUM ANALYZE")
        counts = {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[
                0
            ]
            for table in ("accounts_customer", "rewards_pointsaccount", "rewards_ledgerentry")
        }
    with connect(args, "postgres") as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(args.seed_db), sql.Literal(marker(args))
            )
        )
    log(f"seeded in {time.perf_counter() - started:.1f} s: {counts}")
    return {"reused": False, **counts}


def database_fresh(args) -> None:
    """A copy of the template for one phase (CREATE DATABASE … TEMPLATE copies files: seconds)."""
    with connect(args, "postgres") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(args.db), sql.Identifier(args.seed_db)
            )
        )
    with connect(args, args.db) as conn:
        conn.execute("ANALYZE")


# --- The file ---------------------------------------------------------------------------

CATEGORIES = ["coffee-beans"] * 25 + ["equipment"] * 10 + ["pastry"] * 20 + ["drinks"] * 20 + [""] * 25


def csv_write(args) -> Path:
    """The CSV of the run (kept: the same arguments give the same file)."""
    path = Path(args.work) / f"purchases-{args.rows}-{args.customers}-{args.new_customers}-{args.seed}.csv"
    if path.exists():
        return path
    log(f"writing {path} ({args.rows:,} rows)")
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(args.seed)
    today = dt.datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - dt.timedelta(days=730)
    span = 730 * 86400 - 1
    moments = sorted(rnd.randrange(span) for _ in range(args.rows))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        f.write("customer,occurred_at,amount,external_id,currency,category\n")
        lines = []
        for n, offset in enumerate(moments):
            if rnd.random() < 0.85:
                # A few regulars buy much more often than most (a power law over the customers).
                ref = f"B{1 + int(args.customers * rnd.random() ** 2):07d}"
            else:
                ref = f"N{1 + rnd.randrange(args.new_customers):07d}"
            moment = start + dt.timedelta(seconds=offset)
            when = moment.strftime("%Y-%m-%dT%H:%M:%S") if n % 10 else moment.strftime("%Y-%m-%d")
            amount = f"{rnd.randrange(500, 50_000) / 100:.2f}"
            external_id = f"pos-{args.seed}-{n}" if n % 10 != 3 else ""
            currency = "DKK" if n % 2 else ""
            lines.append(f"{ref},{when},{amount},{external_id},{currency},{rnd.choice(CATEGORIES)}\n")
            if len(lines) >= 50_000:
                f.writelines(lines)
                lines = []
        f.writelines(lines)
    tmp.rename(path)
    return path


# --- Measuring --------------------------------------------------------------------------


def proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS, sum(values[:8]) / TICKS


class BackendSampler:
    """CPU seconds of the client backends of a database while a process runs: /proc/<pid>/stat of
    each backend (found in pg_stat_activity), read every 20 ms; a backend's last reading counts
    (what it used in its last 20 ms before exiting is missed)."""

    def __init__(self, args, db: str):
        self.conn = connect(args, db)
        self.own = self.conn.info.backend_pid
        self.db = db
        self.cpu: dict[int, float] = {}
        self.start: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def backends(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend' "
            "AND pid <> %s",
            [self.db, self.own],
        ).fetchall()
        return [pid for (pid,) in rows]

    def run(self) -> None:
        last_lookup = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now - last_lookup > 0.5:
                for pid in self.backends():
                    if pid not in self.cpu:
                        self.start[pid] = proc_cpu(pid) or 0.0
                        self.cpu[pid] = self.start[pid]
                last_lookup = now
            for pid in list(self.cpu):
                value = proc_cpu(pid)
                if value is not None:
                    self.cpu[pid] = value
            self.stop.wait(0.02)

    def __enter__(self) -> BackendSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()

    @property
    def seconds(self) -> float:
        return sum(self.cpu[pid] - self.start[pid] for pid in self.cpu)


def import_run(args, path: Path, *extra: str) -> dict:
    command = [PY, "manage.py", "import_purchases", str(path), "--progress-every", "0", *extra]
    if args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    load_before = os.getloadavg()
    busy0, total0 = machine_busy()
    with BackendSampler(args, args.db) as sampler:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=django_env(args, args.db),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = process.communicate()
        status = process.returncode
        wall = time.perf_counter() - started
    busy1, total1 = machine_busy()
    if status not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({status}):\n{err[-3000:]}")
    return {
        "command": "python manage.py import_purchases FILE " + " ".join(extra),
        "wall_s": round(wall, 2),
        "rows_per_s": round(args.rows / wall),
        "postgres_backend_cpu_s": round(sampler.seconds, 2),
        "summary": out.strip(),
        "errors": err.strip().splitlines()[:5],
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine_busy_cores": round((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1), 2),
    }


def children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def phase(args, name: str, path: Path, *extra: str) -> dict:
    # The child is reaped by communicate(): its CPU time lands in this process's children's times.
    before = children_cpu()
    result = import_run(args, path, *extra)
    result["process_cpu_s"] = round(children_cpu() - before, 2)
    result["cpu_s_total"] = round(result["process_cpu_s"] + result["postgres_backend_cpu_s"], 2)
    log(
        f"{name}: {result['rows_per_s']:,} rows/s, {result['wall_s']} s wall, "
        f"CPU {result['process_cpu_s']} s process + {result['postgres_backend_cpu_s']} s PostgreSQL, "
        f"load {result['load_average_before'][0]}"
        f" | {result['summary']}"
    )
    return result


INDEXES = [
    "CREATE UNIQUE INDEX ON {t} (integration_id, external_id)",
    "CREATE INDEX ON {t} (customer, occurred_at)",
    "CREATE INDEX ON {t} (occurred_at)",
]


def copy_ceiling(args, path: Path, *, indexed: bool) -> dict:
    """PostgreSQL's COPY of the file into a bare table (what \\copy does: the client sends the
    file, the server parses and writes it); `indexed`: with rewards_purchase's indexes."""
    table = "bench_copy_indexed" if indexed else "bench_copy"
    with connect(args, args.db) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, integration_id int "
                "NOT NULL DEFAULT 1, customer varchar(64), occurred_at timestamptz, amount numeric(12, 2), "
                "external_id varchar(100), currency varchar(3), category varchar(64))"
            ).format(sql.Identifier(table))
        )
        if indexed:
            for statement in INDEXES:
                conn.execute(statement.format(t=table))
        pid = conn.info.backend_pid
        cpu0 = proc_cpu(pid) or 0.0
        load_before = os.getloadavg()
        started = time.perf_counter()
        with conn.cursor() as cursor, path.open("rb") as f:
            copy_sql = sql.SQL(
                "COPY {} (customer, occurred_at, amount, external_id, currency, category) "
                "FROM STDIN (FORMAT csv, HEADER true)"
            ).format(sql.Identifier(table))
            with cursor.copy(copy_sql) as copy:
                while block := f.read(1 << 20):
                    copy.write(block)
        wall = time.perf_counter() - started
        backend = (proc_cpu(pid) or 0.0) - cpu0
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    result = {
        "command": f"COPY {table} FROM STDIN (FORMAT csv, HEADER true)",
        "wall_s": round(wall, 2),
        "rows_per_s": round(args.rows / wall),
        "postgres_backend_cpu_s": round(backend, 2),
        "load_average_before": [round(v, 2) for v in load_before],
    }
    log(
        f"copy{' (indexed)' if indexed else ''}: {result['rows_per_s']:,} rows/s, {result['wall_s']} s, "
        f"CPU {backend:.2f} s"
    )
    return result


def ledger_check(args) -> dict:
    done = manage(args, args.db, "ledger_check")
    return {"exit": done.returncode, "output": (done.stdout + done.stderr).strip()[-500:]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="server URL, no database")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--db", default="loyalty_bench_imports")
    parser.add_argument("--seed-db", default="loyalty_bench_imports_seed")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--new-customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--chunk-size", type=int, default=0, help="passed to the command (0: its default)")
    parser.add_argument(
        "--work", default=str(ROOT / "var" / "bench_imports"), help="where the CSV is written"
    )
    parser.add_argument("--phases", default="history,rerun,award,award-rerun,copy")
    parser.add_argument(
        "--reuse-seed", action="store_true", help="keep the template database when it matches"
    )
    args = parser.parse_args(argv)
    for name in (args.db, args.seed_db):
        if not name.startswith("loyalty_bench_imports"):
            parser.error(f"{name}: this benchmark's databases are named loyalty_bench_imports…")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": args.rows,
        "customers": args.customers,
        "new_customers": args.new_customers,
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }
    results["seed"] = seed_prepare(args)
    path = csv_write(args)
    results["file_mb"] = round(path.stat().st_size / 1e6, 1)
    fresh_for = {"history", "award", "copy"}
    current = None
    for name in phases:
        if name in fresh_for or current is None:
            database_fresh(args)
        current = name
        if name in ("history", "rerun"):
            results[name] = phase(args, name, path)
        elif name == "award":
            results[name] = phase(args, name, path, "--award-points")
            results["award_ledger_check"] = ledger_check(args)
        elif name == "award-rerun":
            results[name] = phase(args, name, path, "--award-points")
            results["award_rerun_ledger_check"] = ledger_check(args)
        elif name == "copy":
            results["copy"] = copy_ceiling(args, path, indexed=False)
            results["copy_indexed"] = copy_ceiling(args, path, indexed=True)
        else:
            raise SystemExit(f"unknown phase {name}")
    if "copy" in results:
        for name in ("history", "rerun", "award", "award-rerun"):
            if name in results:
                results[name]["ratio_to_copy"] = round(
                    results[name]["rows_per_s"] / results["copy"]["rows_per_s"], 3
                )
    for name, target in TARGETS.items():
        if name in results:
            results[name]["target_rows_per_s"] = target
            results[name]["met"] = results[name]["rows_per_s"] >= target
    OUT.mkdir(exist_ok=True)
    out = OUT / f"imports-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
