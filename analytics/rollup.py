"""The daily per-customer rollup (analytics_customerday): rebuilt in one statement, or
brought up to date for the customers whose purchases or refunds arrived since last time.

A purchase day counts purchases with a positive net amount (amount − refunded); a fully
refunded purchase does not count, a partly refunded one counts with its net amount
(METRICS.md). A refund changes an old day (and may remove it), a late-reported purchase may
add one, so the incremental update re-aggregates every touched customer's days from the
earliest day touched on, read through the (customer, occurred_at) index, numbering them on
from the days before it: `seq` / `prev_day_number` come out as a rebuild would give them,
and a day of new purchases costs a row or two per customer, not their whole history.

What "arrived since last time" means. Ids are taken from a sequence when a row is inserted
but become visible at commit, so when an update reads past id n, a smaller id may still be
in flight (a chunk of the history import, 5,000 rows on one of its two connections; an API
purchase in a long transaction) or rolled back (sequences leave holes). Each read therefore
records the ids between the old and the new watermark that it did not find, as ranges
(RollupGap); the next update reads those ids again with the new ones, folds in what it finds
and keeps the rest. A range is forgotten once no transaction that began before it was noted
is still open (`pg_stat_activity`): by then any id in it has committed, and the read that
forgot it saw it, or never will. Which needs that an id not taken yet is taken above every
id visible now: the identity sequences of Django's tables hand out one id at a time (CACHE 1,
a test checks). A range noted more than GAP_HORIZON ago is forgotten anyway, with a warning.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import sql
from .models import RollupGap, RollupState

logger = logging.getLogger(__name__)

# The writers of purchases and refunds commit within seconds: an API request, a chunk of the
# history import, an award batch. The project sets no statement_timeout or
# idle_in_transaction_session_timeout, so a session left open by hand (psql's BEGIN) could
# hold back the forgetting of ranges indefinitely, and every update would re-read them; after
# a day, a range is forgotten even then (and logged): no writer of this project holds an id
# that long, and the re-read stays small (a day of holes at most).
GAP_HORIZON = dt.timedelta(days=1)

TABLE = "analytics_customerday"
COLUMNS = "customer_id, day, day_number, month_number, receipts, net_amount, as_member, seq, prev_day_number"


def _aggregate_sql(where: str) -> str:
    """INSERT … SELECT of the purchase days of the purchases matching `where`."""
    local_day = sql.local_day_sql("p.occurred_at")
    return f"""
        INSERT INTO {TABLE} ({COLUMNS})
        SELECT customer_id, day, {sql.day_number_sql("day")}, {sql.month_number_sql("day")},
               receipts, net, as_member = 1,
               ROW_NUMBER() OVER w, LAG({sql.day_number_sql("day")}) OVER w
        FROM (
            SELECT p.customer_id, {local_day} AS day, COUNT(*) AS receipts,
                   SUM(p.amount - p.refunded_amount) AS net, MAX({sql.bool_sql("p.was_member")}) AS as_member
            FROM rewards_purchase p
            WHERE p.amount - p.refunded_amount > 0 {where}
            GROUP BY p.customer_id, {local_day}
        ) d
        WINDOW w AS (PARTITION BY customer_id ORDER BY day)
    """


MONTHS = "analytics_customermonth"
MONTH_COLUMNS = (
    "customer_id, month_number, days, receipts, net_amount, repeat_net_amount, first_day_number, "
    "last_day_number, second_day_number"
)


def _months_sql(join: str = "") -> str:
    """INSERT … SELECT of the purchase months of the purchase days matching `join`."""
    return f"""
        INSERT INTO {MONTHS} ({MONTH_COLUMNS})
        SELECT d.customer_id, d.month_number, COUNT(*), SUM(d.receipts), SUM(d.net_amount),
               SUM(CASE WHEN d.seq > 1 THEN d.net_amount ELSE 0 END), MIN(d.day_number), MAX(d.day_number),
               MIN(CASE WHEN d.seq = 2 THEN d.day_number END)
        FROM {TABLE} d {join}
        GROUP BY d.customer_id, d.month_number
    """


def _watermarks() -> tuple[int, int]:
    row = sql.fetchone(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM rewards_purchase), "
        "(SELECT COALESCE(MAX(id), 0) FROM rewards_refund)",
        [],
    )
    return int(row[0]), int(row[1])


GAPS = "analytics_rollupgap"
SOURCES = {RollupGap.Kind.PURCHASE: "rewards_purchase", RollupGap.Kind.REFUND: "rewards_refund"}


def _clock() -> dt.datetime:
    """Now, by the database's clock on PostgreSQL (the clock of `pg_stat_activity`'s times)."""
    if sql.is_postgres():
        return sql.fetchone("SELECT clock_timestamp()", [])[0]
    return timezone.now()


def _open_transactions() -> tuple[dt.datetime, dt.datetime | None] | None:
    """(now, start of the oldest transaction open now in this database other than this one,
    None when there is none) on PostgreSQL. None on SQLite: no gaps are kept there.

    A session of another role whose activity this role may not see (NULL state) counts as a
    transaction open since forever: ranges then wait for GAP_HORIZON."""
    if not sql.is_postgres():
        return None
    sql.execute("SELECT pg_stat_clear_snapshot()", [])  # this transaction's cached view, if any
    now, oldest, hidden = sql.fetchone(
        """SELECT clock_timestamp(), MIN(xact_start), COALESCE(BOOL_OR(state IS NULL), false)
           FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()""",
        [],
    )
    return now, (dt.datetime.min.replace(tzinfo=dt.UTC) if hidden else oldest)


def _gaps_settle(before: tuple[dt.datetime, dt.datetime | None] | None) -> int:
    """Keep, of the ranges left in analytics_gaps_left (the old ones and the one just noted,
    less the ids found), those that some transaction may still fill; return how many.

    `before` is _open_transactions() taken before the read. A range noted before that moment
    is forgotten when the oldest transaction open at that moment began after the range was
    noted, or none was open: whoever took its ids began before it was noted, so had ended
    before the read began, and the read saw what they committed. A range noted by this read is
    kept for the next one."""
    sql.execute(f"DELETE FROM {GAPS}", [])
    if before is None:  # SQLite: nothing below a watermark is ever in flight
        return 0
    checked_at, oldest = before
    horizon = checked_at - GAP_HORIZON
    kept = sql.execute(
        f"""
        INSERT INTO {GAPS} (kind, first_id, last_id, noted_at)
        SELECT kind, first_id, last_id, noted_at FROM analytics_gaps_left
        WHERE noted_at >= %s AND (noted_at > %s OR %s::timestamptz < noted_at)
        """,
        [horizon, checked_at, oldest],
    )
    stale = sql.fetchall(
        """SELECT kind, first_id, last_id, noted_at FROM analytics_gaps_left
            WHERE noted_at < %s AND %s::timestamptz < noted_at""",
        [horizon, oldest],
    )
    if stale:
        # A transaction open for longer than GAP_HORIZON: no writer of this project's (see above).
        logger.warning(
            "rollup: forgetting %d id ranges not seen for %s while a transaction begun before them is "
            "still open; a purchase or refund committed there later reaches the rollup only with "
            "compute_analytics --rebuild: %s",
            len(stale),
            GAP_HORIZON,
            ", ".join(f"{kind} {first}-{last}" for kind, first, last, _noted in stale[:20]),
        )
    return kept


def _gaps_left(found: str) -> None:
    """analytics_gaps_left: the ranges of analytics_rollupgap less the ids in `found` (a table
    of kind, id), each remaining run of ids a range with the time its range was noted. Set-based:
    each range's ids found, with the ids just below and above it, in order; a gap between two
    neighbours is what is left."""
    sql.temp_table(
        "analytics_gaps_left", "kind varchar(8), first_id bigint, last_id bigint, noted_at timestamptz"
    )
    sql.execute(
        f"""
        INSERT INTO analytics_gaps_left (kind, first_id, last_id, noted_at)
        SELECT kind, id + 1, next_id - 1, noted_at FROM (
            SELECT kind, noted_at, id, LEAD(id) OVER (PARTITION BY kind, first_id ORDER BY id) AS next_id
            FROM (
                SELECT g.kind, g.first_id, g.noted_at, f.id
                FROM {GAPS} g JOIN {found} f ON f.kind = g.kind AND f.id BETWEEN g.first_id AND g.last_id
                UNION ALL SELECT kind, first_id, noted_at, first_id - 1 FROM {GAPS}
                UNION ALL SELECT kind, first_id, noted_at, last_id + 1 FROM {GAPS}
            ) points
        ) runs
        WHERE next_id > id + 1
        """,
        [],
    )


def _gaps_of_history(purchase_id: int, refund_id: int) -> None:
    """The ids missing at or below these watermarks now, as new ranges (for a rebuild, which
    reads every purchase after this: an id that commits in between is read twice, which is
    harmless, and none is lost). One pass over each table's primary key, in its order (no sort:
    about 2 s for 10M purchases)."""
    if not sql.is_postgres():
        sql.execute(f"DELETE FROM {GAPS}", [])
        return
    sql.execute(f"TRUNCATE {GAPS}", [])
    for kind, table in SOURCES.items():
        watermark = purchase_id if kind == RollupGap.Kind.PURCHASE else refund_id
        sql.execute(
            f"""
            INSERT INTO {GAPS} (kind, first_id, last_id, noted_at)
            SELECT %s, first_id, id - 1, clock_timestamp() FROM (
                SELECT id, COALESCE(LAG(id) OVER (ORDER BY id), 0) + 1 AS first_id FROM {table} WHERE id <= %s
            ) runs
            WHERE id > first_id
            """,
            [kind, watermark],
        )


@transaction.atomic
def rollup_rebuild() -> dict:
    """Rebuild the rollup from every purchase. Guarantee: afterwards it equals the purchases."""
    sql.prepare()
    purchase_id, refund_id = _watermarks()
    # Before the purchases are read: what is missing now and appears before that read is read
    # twice (harmless); what appears after it is read by the next update.
    _gaps_of_history(purchase_id, refund_id)
    for table in (TABLE, MONTHS):
        sql.execute(f"TRUNCATE {table}" if sql.is_postgres() else f"DELETE FROM {table}", [])
    rows = sql.execute(_aggregate_sql(""), [])
    if sql.is_postgres():
        sql.execute(f"ANALYZE {TABLE}", [])
    # In the days' (customer, day) index order, a customer's months one after the other: no
    # hash table of five million numeric sums.
    with sql.planner(hashagg=False):
        sql.execute(_months_sql(), [])
    now = timezone.now()
    RollupState.objects.update_or_create(
        pk=1,
        defaults={"purchase_id": purchase_id, "refund_id": refund_id, "rebuilt_at": now, "updated_at": now},
    )
    if sql.is_postgres():
        sql.execute(f"ANALYZE {MONTHS}", [])
    return {"purchase_days": rows, "customers_touched": None}


@transaction.atomic
def rollup_update() -> dict:
    """Bring the rollup up to date with purchases and refunds recorded since the last update,
    including those committed late below its watermark (see the module's docstring).

    Idempotent: running it twice changes nothing the second time (a range of ids not seen may
    be forgotten, once nothing can fill it). Rebuilds when the rollup has never been built.
    """
    state = RollupState.objects.select_for_update().filter(pk=1).first()
    if state is None or state.rebuilt_at is None:
        return rollup_rebuild()
    sql.prepare()
    with sql.planner(random_page_cost=sql.CACHED):
        return _update(state)


def _update(state: RollupState) -> dict:
    before = _open_transactions()
    # In one statement, hence one snapshot: the purchases and refunds past the watermarks and
    # those in the ranges not seen before (what a refund touches is its purchase's customer and
    # day). The new watermarks and the ids still missing are read from this table, so what the
    # update folds in and what it records as seen are the same rows.
    sql.temp_table("analytics_arrived", "kind varchar(8), id bigint, customer_id bigint, day date")
    local_day = sql.local_day_sql("p.occurred_at")
    sql.execute(
        f"""
        INSERT INTO analytics_arrived (kind, id, customer_id, day)
        SELECT 'purchase', p.id, p.customer_id, {local_day} FROM rewards_purchase p WHERE p.id > %s
        UNION ALL
        SELECT 'purchase', p.id, p.customer_id, {local_day}
        FROM {GAPS} g JOIN rewards_purchase p ON p.id BETWEEN g.first_id AND g.last_id
        WHERE g.kind = 'purchase'
        UNION ALL
        SELECT 'refund', r.id, p.customer_id, {local_day}
        FROM rewards_refund r JOIN rewards_purchase p ON p.id = r.purchase_id WHERE r.id > %s
        UNION ALL
        SELECT 'refund', r.id, p.customer_id, {local_day}
        FROM {GAPS} g JOIN rewards_refund r ON r.id BETWEEN g.first_id AND g.last_id
        JOIN rewards_purchase p ON p.id = r.purchase_id
        WHERE g.kind = 'refund'
        """,
        [state.purchase_id, state.refund_id],
    )
    noted_at = _clock()  # after the read began: whoever holds an id it missed began before
    newest = sql.fetchone(
        "SELECT MAX(CASE WHEN kind = 'purchase' THEN id END), MAX(CASE WHEN kind = 'refund' THEN id END) "
        "FROM analytics_arrived",
        [],
    )
    purchase_id, refund_id = max(state.purchase_id, newest[0] or 0), max(state.refund_id, newest[1] or 0)
    if before is not None:
        # The ids between the old and the new watermarks join the ranges to look for; then the
        # ranges less what was found.
        RollupGap.objects.bulk_create(
            RollupGap(kind=kind, first_id=old + 1, last_id=new, noted_at=noted_at)
            for kind, old, new in (
                (RollupGap.Kind.PURCHASE, state.purchase_id, purchase_id),
                (RollupGap.Kind.REFUND, state.refund_id, refund_id),
            )
            if new > old
        )
        sql.execute("CREATE INDEX ON analytics_arrived (kind, id)", [])
        _gaps_left("analytics_arrived")
    ranges_kept = _gaps_settle(before)
    sql.temp_table(
        "analytics_touched",
        "customer_id bigint PRIMARY KEY, from_day date, from_month integer, base_days integer, "
        "base_last integer",
    )
    sql.execute(
        f"""
        INSERT INTO analytics_touched (customer_id, from_day, from_month, base_days)
        SELECT customer_id, MIN(day), {sql.month_number_sql("MIN(day)")}, 0 FROM analytics_arrived
        GROUP BY customer_id
        """,
        [],
    )
    touched = sql.fetchone("SELECT COUNT(*) FROM analytics_touched", [])[0]
    if sql.is_postgres():
        # Without statistics the planner guesses the size of a temporary table and may scan
        # every purchase and every purchase day instead of probing the indexes per customer.
        sql.execute("ANALYZE analytics_touched", [])
    sql.execute(
        f"""
        DELETE FROM {TABLE} WHERE EXISTS (
            SELECT 1 FROM analytics_touched t
            WHERE t.customer_id = {TABLE}.customer_id AND {TABLE}.day >= t.from_day)
        """,
        [],
    )
    # What is left of each touched customer are the days before the first day touched.
    sql.execute(
        f"""
        UPDATE analytics_touched SET base_days = b.days, base_last = b.last
        FROM (SELECT d.customer_id, COUNT(*) AS days, MAX(d.day_number) AS last
              FROM {TABLE} d JOIN analytics_touched t ON t.customer_id = d.customer_id
              GROUP BY d.customer_id) b
        WHERE analytics_touched.customer_id = b.customer_id
        """,
        [],
    )
    # The same condition as a range of the (customer, occurred_at) index, on PostgreSQL.
    from_moment = (
        f"AND p.occurred_at >= (t.from_day::timestamp AT TIME ZONE '{settings.TIME_ZONE}')"
        if sql.is_postgres()
        else ""
    )
    rows = sql.execute(
        f"""
        INSERT INTO {TABLE} ({COLUMNS})
        SELECT customer_id, day, {sql.day_number_sql("day")}, {sql.month_number_sql("day")},
               receipts, net, as_member = 1,
               base_days + ROW_NUMBER() OVER w,
               COALESCE(LAG({sql.day_number_sql("day")}) OVER w, base_last)
        FROM (
            SELECT p.customer_id, {local_day} AS day, COUNT(*) AS receipts,
                   SUM(p.amount - p.refunded_amount) AS net, MAX({sql.bool_sql("p.was_member")}) AS as_member,
                   t.base_days, t.base_last
            FROM rewards_purchase p JOIN analytics_touched t ON t.customer_id = p.customer_id
            WHERE p.amount - p.refunded_amount > 0 AND {local_day} >= t.from_day {from_moment}
            GROUP BY p.customer_id, {local_day}, t.base_days, t.base_last
        ) d
        WINDOW w AS (PARTITION BY customer_id ORDER BY day)
        """,
        [],
    )
    # The months of those days, from the month of the first day touched on.
    sql.execute(
        f"""
        DELETE FROM {MONTHS} WHERE EXISTS (
            SELECT 1 FROM analytics_touched t
            WHERE t.customer_id = {MONTHS}.customer_id AND {MONTHS}.month_number >= t.from_month)
        """,
        [],
    )
    sql.execute(
        _months_sql(
            "JOIN analytics_touched t ON t.customer_id = d.customer_id AND d.month_number >= t.from_month"
        ),
        [],
    )
    state.purchase_id, state.refund_id, state.updated_at = purchase_id, refund_id, timezone.now()
    state.save(update_fields=["purchase_id", "refund_id", "updated_at"])
    # analytics_touched stays for the rest of the session: the incremental update re-scores
    # exactly these customers (services.analytics_update); the next update replaces it.
    return {"purchase_days": rows, "customers_touched": touched, "id_ranges_not_seen": ranges_kept}
