"""The daily per-customer rollup (analytics_customerday): rebuilt in one statement, or
brought up to date for the customers whose purchases or refunds arrived since last time.

A purchase day counts purchases with a positive net amount (amount − refunded); a fully
refunded purchase does not count, a partly refunded one counts with its net amount
(METRICS.md). A refund changes an old day (and may remove it), a late-reported purchase may
add one, so the incremental update re-aggregates every touched customer's days from the
earliest day touched on, read through the (customer, occurred_at) index, numbering them on
from the days before it: `seq` / `prev_day_number` come out as a rebuild would give them,
and a day of new purchases costs a row or two per customer, not their whole history.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import sql
from .models import RollupState

# Ids are taken from a sequence when a row is inserted but become visible at commit, so a
# purchase with a smaller id can appear after a larger one was read. Re-reading this many
# ids below the watermark catches such late commits (re-aggregating is idempotent). It is a
# limit, not a guarantee: the nightly full refresh brings the rollup up to date the same way
# (it does not rebuild it), so a purchase or refund committed more than ID_OVERLAP ids below
# the watermark of an update that ran meanwhile (two writers' long transactions, such as the
# history import's 5,000-row chunks) stays out of the rollup until
# `compute_analytics --rebuild`.
ID_OVERLAP = 2000

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


@transaction.atomic
def rollup_rebuild() -> dict:
    """Rebuild the rollup from every purchase. Guarantee: afterwards it equals the purchases."""
    sql.prepare()
    purchase_id, refund_id = _watermarks()
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
    """Bring the rollup up to date with purchases and refunds recorded since the last update.

    Idempotent: running it twice changes nothing the second time. Rebuilds when the rollup
    has never been built.
    """
    state = RollupState.objects.select_for_update().filter(pk=1).first()
    if state is None or state.rebuilt_at is None:
        return rollup_rebuild()
    sql.prepare()
    with sql.planner(random_page_cost=sql.CACHED):
        return _update(state)


def _update(state: RollupState) -> dict:
    purchase_id, refund_id = _watermarks()
    sql.temp_table(
        "analytics_touched",
        "customer_id bigint PRIMARY KEY, from_day date, from_month integer, base_days integer, "
        "base_last integer",
    )
    sql.execute(
        f"""
        INSERT INTO analytics_touched (customer_id, from_day, from_month, base_days)
        SELECT customer_id, MIN(day), {sql.month_number_sql("MIN(day)")}, 0 FROM (
            SELECT customer_id, {sql.local_day_sql("occurred_at")} AS day FROM rewards_purchase WHERE id > %s
            UNION ALL
            SELECT p.customer_id, {sql.local_day_sql("p.occurred_at")}
            FROM rewards_refund r JOIN rewards_purchase p ON p.id = r.purchase_id
            WHERE r.id > %s
        ) t
        GROUP BY customer_id
        """,
        [max(state.purchase_id - ID_OVERLAP, 0), max(state.refund_id - ID_OVERLAP, 0)],
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
    local_day = sql.local_day_sql("p.occurred_at")
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
    return {"purchase_days": rows, "customers_touched": touched}
