"""The few SQL snippets that differ between PostgreSQL and SQLite, and small helpers.

Everything else the analytics run is one SQL text for both: the rollup stores days and
months as integers (days since 1970-01-01, months since year 0), so windows, gaps and
cohorts are integer arithmetic. What differs is turning a timestamp into a calendar day
of the program's time zone: PostgreSQL does it with ``AT TIME ZONE``; on SQLite (the
demo) a Python function registered on the connection does it with zoneinfo, so summer
time is right on both.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar
from zoneinfo import ZoneInfo

import numpy as np
from django.conf import settings
from django.db import DataError, connection, transaction

EPOCH = dt.date(1970, 1, 1)
T = TypeVar("T")


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def day_of(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=int(number))


def month_number(day: dt.date) -> int:
    return day.year * 12 + day.month - 1


def month_start(number: int) -> dt.date:
    return dt.date(int(number) // 12, int(number) % 12 + 1, 1)


def month_end(number: int) -> dt.date:
    return month_start(number + 1) - dt.timedelta(days=1)


def program_tz() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def local_day_sql(column: str) -> str:
    """SQL for the program-time-zone calendar day (a date) of a timestamp column."""
    if is_postgres():
        return f"(({column}) AT TIME ZONE '{settings.TIME_ZONE}')::date"
    return f"analytics_local_day({column})"


def day_number_sql(day: str) -> str:
    """SQL for the day number of a date expression."""
    if is_postgres():
        return f"(({day}) - DATE '1970-01-01')"
    return f"CAST(julianday({day}) - 2440587.5 AS INTEGER)"


def month_number_sql(day: str) -> str:
    """SQL for the month number (year × 12 + month − 1) of a date expression."""
    if is_postgres():
        return f"(EXTRACT(YEAR FROM {day})::int * 12 + EXTRACT(MONTH FROM {day})::int - 1)"
    return f"(CAST(strftime('%%Y', {day}) AS INTEGER) * 12 + CAST(strftime('%%m', {day}) AS INTEGER) - 1)"


def bool_sql(column: str) -> str:
    """A boolean column as 0/1, for SUM and MAX on both databases."""
    return f"(CASE WHEN {column} THEN 1 ELSE 0 END)"


def _sqlite_local_day(value):
    if value is None:
        return None
    moment = dt.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(program_tz()).date().isoformat()


def prepare() -> None:
    """Register the SQLite helper functions on this connection (nothing to do on PostgreSQL)."""
    connection.ensure_connection()
    if connection.vendor == "sqlite":
        connection.connection.create_function("analytics_local_day", 1, _sqlite_local_day, deterministic=True)


def tune_for_analytics() -> None:
    """Settings for the analytics transaction's large set-based statements (PostgreSQL only):
    sorts and hashes of millions of rows in memory rather than in temporary files, temporary
    work tables in the backend's memory (possible only before the session's first temporary
    table, hence the check and the savepoint), no JIT compilation, which costs more than it saves on queries
    that each run once, the index builds of the scores' partition in memory too. `SET LOCAL`
    ends with the transaction.

    `synchronous_commit = off`: the commit returns before its WAL is flushed. A crash in the
    next fraction of a second can lose the transaction as a whole (never part of it, never
    anything else): a snapshot or a rollup update is derived data, and the next run computes
    it again (the rollup's watermark is lost with it)."""
    if not is_postgres():
        return
    execute("SET LOCAL work_mem = '256MB'")
    execute("SET LOCAL maintenance_work_mem = '256MB'")
    execute("SET LOCAL jit = off")
    execute("SET LOCAL synchronous_commit = off")
    if fetchone("SELECT pg_my_temp_schema() = 0")[0]:
        # No temporary schema does not prove that no temporary table was touched: one created
        # in a transaction that rolled back leaves no schema but the session's temporary buffers
        # in use (a long-lived worker's connection; the suite's rolled-back tests), and then
        # PostgreSQL refuses the change. The work tables then live in the buffers it has.
        try:
            with transaction.atomic():
                execute("SET temp_buffers = '1GB'")
        except DataError:
            pass


@contextlib.contextmanager
def planner(*, random_page_cost: float | None = None, **enabled: bool):
    """Planner settings for the statements inside (PostgreSQL), back to the defaults after:
    `hashagg=False` → `enable_hashagg = off`, and the cost of a random page read. For
    statements whose best plan the planner cannot see: that a customer's days come in month
    order, or that the pages a few thousand index probes need are in memory."""
    if not is_postgres():
        yield
        return
    settings_ = {f"enable_{name}": "on" if on else "off" for name, on in enabled.items()}
    if random_page_cost is not None:
        settings_["random_page_cost"] = str(float(random_page_cost))
    for name, value in settings_.items():
        execute(f"SET LOCAL {name} = {value}")
    yield
    # After an error the transaction (or savepoint) is rolled back, and these settings with it.
    for name in settings_:
        execute(f"SET LOCAL {name} TO DEFAULT")


# Index probes for a few thousand customers against a scan of millions of rows: with the
# default cost of a random page read (4, a spinning disk) the planner scans.
CACHED = 1.1


def timestamp_param(moment: dt.datetime):
    """A timestamp as the database stores it, for comparing with a column in raw SQL."""
    return connection.ops.adapt_datetimefield_value(moment)


def local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=program_tz())


def execute(sql: str, params: Sequence | dict | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def fetchall(sql: str, params: Sequence | dict | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def fetchall_meanwhile(sql: str, meanwhile: Callable[[], T]) -> tuple[list[tuple], T]:
    """fetchall(sql) and meanwhile(), at the same time on PostgreSQL: the query runs on this
    connection in a thread (waiting for the server, it holds no lock Python needs) while this
    thread calls `meanwhile`, which must not use the database (numpy and scipy work: the model
    fits). Two cores then work at once: PostgreSQL on the query, Python on the fits. The query
    has no parameters. Elsewhere (SQLite, whose connection belongs to one thread) one after the
    other."""
    if not is_postgres():
        return fetchall(sql), meanwhile()
    connection.ensure_connection()
    raw = connection.connection  # psycopg serialises its use; only the thread below uses it
    outcome: dict = {}

    def run() -> None:
        try:
            with raw.cursor() as cursor:
                cursor.execute(sql)
                outcome["rows"] = cursor.fetchall()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="analytics-query", daemon=True)
    thread.start()
    try:
        result = meanwhile()
    finally:
        thread.join()  # the connection is free again before anything else uses it
    if "error" in outcome:
        raise outcome["error"]
    return outcome["rows"], result


def fetchone(sql: str, params: Sequence | dict | None = None) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def temp_table(name: str, columns: str) -> None:
    """A fresh temporary table for this connection (gone at disconnect)."""
    execute(f"DROP TABLE IF EXISTS {name}")
    execute(f"CREATE TEMPORARY TABLE {name} ({columns})")


def rows_insert(table: str, columns: Iterable[str], rows: list[tuple]) -> None:
    """Insert many rows: COPY on PostgreSQL, executemany elsewhere."""
    columns = list(columns)
    if not rows:
        return
    if is_postgres():
        connection.ensure_connection()
        with (
            connection.connection.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join(["%s"] * len(columns))
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def arrays_insert(table: str, columns: dict[str, np.ndarray]) -> None:
    """Insert rows given as numpy columns: int32 arrays into integer columns, int64 into
    bigint, float arrays into double precision (NaN stored as NULL). PostgreSQL: one binary
    COPY whose bytes numpy lays out (a few hundred thousand rows in well under a second, where
    formatting each row in Python takes seconds); elsewhere through rows_insert."""
    names = list(columns)
    arrays = [np.asarray(columns[name]) for name in names]
    count = len(arrays[0]) if arrays else 0
    if not count:
        return
    floats = [np.issubdtype(array.dtype, np.floating) for array in arrays]
    if not is_postgres():
        rows = zip(*[array.tolist() for array in arrays], strict=True)
        rows_insert(
            table,
            names,
            [tuple(None if f and v != v else v for v, f in zip(row, floats, strict=True)) for row in rows],
        )
        return
    # Binary COPY: a header, then per row the field count and each field's length and bytes
    # (big-endian), then -1 (https://www.postgresql.org/docs/15/sql-copy.html#id-1.9.3.55.9.4).
    layout = [("fields", ">i2")]
    for i, (array, is_float) in enumerate(zip(arrays, floats, strict=True)):
        width = 8 if is_float else array.dtype.itemsize
        if width not in (4, 8):
            raise ValueError(f"{names[i]}: int32, int64 or float arrays only, not {array.dtype}")
        layout += [(f"l{i}", ">i4"), (f"v{i}", f">f{width}" if is_float else f">i{width}")]
    records = np.empty(count, dtype=np.dtype(layout))
    records["fields"] = len(names)
    for i, array in enumerate(arrays):
        records[f"l{i}"] = records.dtype[f"v{i}"].itemsize
        records[f"v{i}"] = array
    connection.ensure_connection()
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN WITH (FORMAT binary)") as copy,
    ):
        copy.write(b"PGCOPY\n\xff\r\n\x00" + bytes(8))
        step = 65536
        for start in range(0, count, step):
            copy.write(records[start : start + step].tobytes())
        copy.write(b"\xff\xff")
    nulls = [
        name
        for name, array, is_float in zip(names, arrays, floats, strict=True)
        if is_float and np.isnan(array).any()
    ]
    if nulls:
        execute(f"UPDATE {table} SET {', '.join(f'{n} = NULLIF({n}, {chr(39)}NaN{chr(39)})' for n in nulls)}")


def date_sql(number: str) -> str:
    """SQL for the date of a day-number expression."""
    if is_postgres():
        return f"(DATE '1970-01-01' + ({number}))"
    return f"date(({number}) * 86400, 'unixepoch')"


def money_sql(expr: str) -> str:
    """SQL rounding a float expression to a 2-decimal amount."""
    if is_postgres():
        return f"ROUND(({expr})::numeric, 2)"
    return f"ROUND({expr}, 2)"


def floor_int_sql(expr: str) -> str:
    """SQL for floor() of a non-negative expression as an integer (PostgreSQL's CAST rounds)."""
    if is_postgres():
        return f"FLOOR({expr})::int"
    return f"CAST({expr} AS INTEGER)"


def money_type() -> str:
    """Column type of amounts in work tables: exact on PostgreSQL; REAL on SQLite, whose
    NUMERIC affinity would store 170.00 as the integer 170 and then divide as integers."""
    return "numeric" if is_postgres() else "real"
