"""The metrics of METRICS.md as set-based SQL over the work tables (see compute.py).

Each function returns plain rows (dicts); compute.py turns them into MetricValue /
CohortCell rows. Every ratio is None when its denominator is empty, never 0.

Member segments ("members", "non_members") use membership at the as-of date, not at each
period: a series then compares the same two groups of people throughout, instead of moving
each member from one group to the other at enrollment (what joining changes is the
difference-in-differences' question, effect.py).
"Purchases" in AOV are purchase days, as everywhere in METRICS.md (several receipts of
one visit are one purchase); the receipt count is kept beside it in `extra`.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

from . import sql
from .compute import Parameters, months_in_order, months_sql

PERIODS = {"month": 1, "quarter": 3, "year": 12}
PERIODS_BACK = {"month": 24, "quarter": 12, "year": 5}
SEGMENTS = {1: "members", 0: "non_members"}
T = TypeVar("T")


def ratio(numerator, denominator) -> float | None:
    if not denominator:
        return None
    return float(numerator or 0) / float(denominator)


def _metric(
    metric, period, start, end, segment, numerator, denominator, *, value=None, complete=True, **extra
):
    if value is None and denominator is not None:
        value = ratio(numerator, denominator)
    return {
        "metric": metric,
        "period": period,
        "period_start": start,
        "period_end": end,
        "segment": segment,
        "value": value,
        "numerator": None if numerator is None else float(numerator),
        "denominator": None if denominator is None else float(denominator),
        "complete": complete,
        "extra": extra,
    }


def _period_bounds(index: int, length: int) -> tuple[dt.date, dt.date]:
    return sql.month_start(index * length), sql.month_end(index * length + length - 1)


# --- Retention, churn, repeat purchasing per calendar period -------------------------------------


LONGER_PERIODS = [length for length in PERIODS.values() if length > 1]


def monthly_activity(
    p: Parameters, *, meanwhile: Callable[[], T] | None = None
) -> list[tuple] | tuple[list, T]:
    """One pass over the months (compute.months_sql) in (customer, month) order, grouped by
    month, membership, first month and enrollment month (a few thousand rows): what the period
    series and the cohorts are summed from. Per row: customers active in the month, their purchase days, net
    revenue and receipts; customers also active the month before; with ≥ 2 purchase days;
    whose last month it is; and, per longer period (quarter, year), customers whose first
    month in that period this is, of those the ones active in the period before, and the ones
    with ≥ 2 purchase days in the period (so that summing months gives per-period counts)."""
    # COUNT(*) FILTER rather than SUM(CASE … THEN 1 ELSE 0 END): the same counts, a sixth less
    # CPU over the five million customer-months (SQLite has FILTER since 3.30).
    longer = []
    for length in LONGER_PERIODS:
        first_in_period = f"(prev IS NULL OR prev / {length} <> month / {length})"
        longer += [
            f"COUNT(*) FILTER (WHERE {first_in_period})",
            f"COUNT(*) FILTER (WHERE prev / {length} = month / {length} - 1)",
            f"COUNT(*) FILTER (WHERE {first_in_period} AND (days >= 2 OR next / {length} = month / {length})"
            ")",
        ]
    # Membership, enrollment and first month per shopper from analytics_cs, merge-joined to the
    # months as they come in (customer, month) order, so the window needs no sort.
    query = f"""
            SELECT month, is_member, first_month, enrolled_month, COUNT(*), SUM(days), SUM(net),
                   SUM(receipts), COUNT(*) FILTER (WHERE prev = month - 1), COUNT(*) FILTER (WHERE days >= 2),
                   COUNT(*) FILTER (WHERE next IS NULL), {", ".join(longer)}
            FROM (SELECT m.month, cs.is_member, cs.enrolled_month, cs.first_month, m.days, m.net, m.receipts,
                         LAG(m.month) OVER w AS prev, LEAD(m.month) OVER w AS next
                  FROM ({months_sql(p)}) m JOIN analytics_cs cs ON cs.customer_id = m.customer_id
                  WINDOW w AS (PARTITION BY m.customer_id ORDER BY m.month)) x
            GROUP BY month, is_member, first_month, enrolled_month
            """
    with months_in_order():
        if meanwhile is None:
            return sql.fetchall(query, [])
        # With `meanwhile` (plain Python work, the model fits): both at once, and its result too.
        return sql.fetchall_meanwhile(query, meanwhile)


def period_series(p: Parameters, activity: list[tuple] | None = None) -> list[dict]:
    """Per month / quarter / year: active customers, purchase days, revenue, CRR and churn
    (id-based: |S ∩ E| / |S|), RPR, frequency and AOV, for all, members and non-members."""
    activity = monthly_activity(p) if activity is None else activity
    out = []
    for name, length in PERIODS.items():
        current = p.as_of_month // length
        first = current - PERIODS_BACK[name]
        # (period, segment) → active, days, net, receipts, repeaters, active in the period before too
        sums: dict[tuple[int, str], list] = {}
        for row in activity:
            month, member, _first_month, _enrolled, active, days, net, receipts, kept, repeaters, _last = row[
                :11
            ]
            if length > 1:
                offset = 11 + 3 * LONGER_PERIODS.index(length)
                active, kept, repeaters = row[offset : offset + 3]
            for segment in ("all", SEGMENTS[int(member)]):
                total = sums.setdefault((month // length, segment), [0, 0, 0, 0, 0, 0])
                for i, value in enumerate((active, days, net, receipts, repeaters, kept)):
                    total[i] += value or 0
        for index in range(first, current + 1):
            start, end = _period_bounds(index, length)
            complete = end <= p.as_of
            for segment in ("all", "members", "non_members"):
                active, days, net, receipts, repeaters, kept = (
                    float(v) for v in sums.get((index, segment), [0] * 6)
                )
                base = float(sums.get((index - 1, segment), [0])[0])
                crr = ratio(kept, base)
                common = {"complete": complete}
                out += [
                    _metric(
                        "active_customers", name, start, end, segment, None, None, value=active, **common
                    ),
                    _metric("purchase_days", name, start, end, segment, None, None, value=days, **common),
                    _metric("net_revenue", name, start, end, segment, None, None, value=net, **common),
                    _metric("crr", name, start, end, segment, kept, base, **common),
                    _metric(
                        "churn", name, start, end, segment, base - kept if base else None, base, **common
                    ),
                    _metric("rpr", name, start, end, segment, repeaters, active, **common),
                    _metric("frequency", name, start, end, segment, days, active, **common),
                    _metric("aov", name, start, end, segment, net, days, receipts=receipts, **common),
                ]
                if name == "month":
                    annual = None if crr is None else 1 - crr**12
                    out.append(
                        _metric(
                            "churn_annualised", name, start, end, segment, None, None, value=annual, **common
                        )
                    )
    return out


# --- Trailing windows ---------------------------------------------------------------------------


def _percentiles(histogram: list[tuple[int, int]], quantiles=(0.25, 0.5, 0.75)) -> list[float | None]:
    """Percentiles (linear interpolation between order statistics, as numpy's default) of a
    distribution given as (value, count) pairs."""
    histogram = sorted((int(v), int(c)) for v, c in histogram if c)
    total = sum(c for _, c in histogram)
    if not total:
        return [None for _ in quantiles]

    def order_statistic(k: int) -> int:
        seen = 0
        for value, count in histogram:
            seen += count
            if k < seen:
                return value
        return histogram[-1][0]

    out = []
    for q in quantiles:
        position = q * (total - 1)
        low = int(position)
        fraction = position - low
        a = order_statistic(low)
        b = order_statistic(min(low + 1, total - 1))
        out.append(a + (b - a) * fraction)
    return out


def window_metrics(p: Parameters) -> list[dict]:
    """Over trailing windows of W days ending at the as-of date: RPR, purchase frequency, AOV,
    active customers, and inter-purchase time (median, p25, p75 of days between consecutive
    purchase days, counted when the later day falls in the window)."""
    a = p.as_of_number
    out = []
    # One pass for every window: per customer, then per membership.
    earliest = a - max(p.windows) + 1
    all_rows, all_gaps = _window_rows(p, earliest)
    for number, days in enumerate(p.windows):
        start = a - days + 1
        rows = [(row[0], *row[1 + 5 * number : 6 + 5 * number]) for row in all_rows]
        gaps = [(member, gap, counts[number]) for member, gap, *counts in all_gaps]
        totals: dict[str, list[float]] = {s: [0, 0, 0, 0, 0] for s in ("all", "members", "non_members")}
        for member, active, pdays, net, receipts, repeaters in rows:
            for segment in ("all", SEGMENTS[int(member)]):
                for i, value in enumerate((active, pdays, net, receipts, repeaters)):
                    totals[segment][i] += float(value or 0)
        histograms: dict[str, dict[int, int]] = {s: {} for s in totals}
        for member, gap, count in gaps:
            for segment in ("all", SEGMENTS[int(member)]):
                histograms[segment][gap] = histograms[segment].get(gap, 0) + count
        first_day, last_day = sql.day_of(start), p.as_of
        for segment, (active, pdays, net, receipts, repeaters) in totals.items():
            p25, median, p75 = _percentiles(list(histograms[segment].items()))
            extra = {"days": days}
            out += [
                _metric(
                    "active_customers",
                    "window",
                    first_day,
                    last_day,
                    f"{segment}:{days}",
                    None,
                    None,
                    value=active,
                    **extra,
                ),
                _metric(
                    "rpr", "window", first_day, last_day, f"{segment}:{days}", repeaters, active, **extra
                ),
                _metric(
                    "frequency", "window", first_day, last_day, f"{segment}:{days}", pdays, active, **extra
                ),
                _metric(
                    "aov",
                    "window",
                    first_day,
                    last_day,
                    f"{segment}:{days}",
                    net,
                    pdays,
                    receipts=receipts,
                    **extra,
                ),
                _metric(
                    "net_revenue",
                    "window",
                    first_day,
                    last_day,
                    f"{segment}:{days}",
                    None,
                    None,
                    value=net,
                    **extra,
                ),
                _metric(
                    "inter_purchase_days",
                    "window",
                    first_day,
                    last_day,
                    f"{segment}:{days}",
                    None,
                    None,
                    value=median,
                    p25=p25,
                    p75=p75,
                    gaps=sum(histograms[segment].values()),
                    **extra,
                ),
            ]
    return out


def _window_pieces(p: Parameters) -> tuple[str, dict[int, str]]:
    """SQL of the pieces that make up every trailing window, and per window the condition on a
    piece that it lies inside it. A window's whole months come from the monthly rollup (and the
    as-of month from analytics_asof_month, up to the as-of date); only the days of the month in
    which it starts, from that day on, come from the daily rollup. A third of the rows of a
    year of purchase days, and no pass over all of them. Pieces: customer_id, m (month, for
    months), d (day, for days), days, net, receipts."""
    a = p.as_of_number
    ranges, inside, wholes = [], {}, []
    for window in p.windows:
        start = a - window + 1
        day = sql.day_of(start)
        # The first month that lies wholly in the window, and the days before it that do.
        whole = sql.month_number(day) + (day.day > 1)
        partial_end = min(a, sql.day_number(sql.month_start(whole)) - 1)
        inside[window] = f"(m >= {whole} OR d BETWEEN {start} AND {partial_end})"
        if start <= partial_end:
            ranges.append(f"day_number BETWEEN {start} AND {partial_end}")
        wholes.append(whole)
    first_whole = min(wholes)
    no_day = "CAST(NULL AS INTEGER)"
    pieces = f"""
        SELECT customer_id, month_number AS m, {no_day} AS d, days, net_amount AS net, receipts
        FROM analytics_customermonth WHERE month_number >= {first_whole} AND month_number < {p.as_of_month}
        UNION ALL
        SELECT customer_id, month_number, {no_day}, days, net_amount, receipts
        FROM analytics_asof_month WHERE month_number >= {first_whole}
        UNION ALL
        SELECT customer_id, CAST(NULL AS INTEGER), day_number, 1, net_amount, receipts
        FROM analytics_customerday WHERE {" OR ".join(ranges) or "1 = 0"}
    """
    return pieces, inside


def _window_rows(p: Parameters, earliest: int) -> tuple[list, list]:
    """Per membership: the window sums; per membership and gap: the gap counts per window."""
    a = p.as_of_number
    pieces, inside = _window_pieces(p)
    per_customer = ", ".join(
        f"SUM(CASE WHEN {inside[days]} THEN days ELSE 0 END) AS days_{days}, "
        f"SUM(CASE WHEN {inside[days]} THEN net ELSE 0 END) AS net_{days}, "
        f"SUM(CASE WHEN {inside[days]} THEN receipts ELSE 0 END) AS receipts_{days}"
        for days in p.windows
    )
    per_member = ", ".join(
        f"SUM(CASE WHEN w.days_{days} > 0 THEN 1 ELSE 0 END), SUM(w.days_{days}), SUM(w.net_{days}), "
        f"SUM(w.receipts_{days}), SUM(CASE WHEN w.days_{days} >= 2 THEN 1 ELSE 0 END)"
        for days in p.windows
    )
    # A hash join to the customers: the planner, blind to how many customers the pieces have,
    # would probe the customers' index half a million times.
    with sql.planner(nestloop=False):
        all_rows = sql.fetchall(
            f"""
            SELECT c.is_member, {per_member}
            FROM (SELECT customer_id, {per_customer} FROM ({pieces}) pieces GROUP BY customer_id) w
            JOIN analytics_cust c ON c.customer_id = w.customer_id
            GROUP BY c.is_member
            """,
            [],
        )
    per_gap = ", ".join(
        f"SUM(CASE WHEN d.day_number >= {a - days + 1} THEN 1 ELSE 0 END)" for days in p.windows
    )
    # The gaps read the window's days with a sequential scan: the rollup is laid out by customer,
    # so the days of the last year are on nearly every page, and the (day_number) index would
    # visit those pages in random order, twice as slow (9.3M days, PostgreSQL).
    with sql.planner(indexscan=False, bitmapscan=False):
        all_gaps = sql.fetchall(
            f"""
            SELECT c.is_member, d.day_number - d.prev_day_number, {per_gap}
            FROM analytics_customerday d JOIN analytics_cust c ON c.customer_id = d.customer_id
            WHERE d.day_number BETWEEN %s AND %s AND d.prev_day_number IS NOT NULL
            GROUP BY c.is_member, d.day_number - d.prev_day_number
            """,
            [earliest, a],
        )
    return all_rows, all_gaps


def second_purchase_rates(p: Parameters, within=(30, 60, 90)) -> list[dict]:
    """Share of customers whose first purchase day is at least d days before the as-of date
    and who had a second purchase day within d days of the first."""
    a = p.as_of_number
    parts = ", ".join(
        f"SUM(CASE WHEN first_day <= {a - d} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN first_day <= {a - d} AND second_day <= first_day + {d} THEN 1 ELSE 0 END)"
        for d in within
    )
    row = sql.fetchone(f"SELECT {parts} FROM analytics_cs", [])
    out = []
    for i, d in enumerate(within):
        base, repeated = row[2 * i] or 0, row[2 * i + 1] or 0
        out.append(_metric("second_purchase_rate", "asof", None, p.as_of, str(d), repeated, base, days=d))
    return out


# --- Cohorts ------------------------------------------------------------------------------


def cohorts(
    p: Parameters, *, months_back: int | None = None, activity: list[tuple] | None = None
) -> list[dict]:
    """Monthly cohorts by first purchase day and by enrollment: bought in month c + k, and
    bought in month c + k or later (from each customer's last purchase month); summed from
    `monthly_activity`. Enrollment cohorts count every member who enrolled in the month,
    with purchases or not."""
    activity = monthly_activity(p) if activity is None else activity
    current = p.as_of_month
    first = current - (months_back or p.months_back) + 1
    complete_through = current if sql.month_end(current) <= p.as_of else current - 1
    out = []
    counts = {"first_purchase": ({}, {}, {}), "enrollment": ({}, {}, {})}
    for month, _member, first_month, enrolled_month, active, *rest in activity:
        last_here = rest[5]
        for kind, cohort in (("first_purchase", first_month), ("enrollment", enrolled_month)):
            if cohort is None or cohort < first or month < cohort:
                continue
            sizes, actives, lasts = counts[kind]
            key = (cohort, month - cohort)
            actives[key] = actives.get(key, 0) + active
            lasts[key] = lasts.get(key, 0) + last_here
            if kind == "first_purchase" and month == cohort:
                sizes[cohort] = sizes.get(cohort, 0) + active
    counts["enrollment"][0].update(
        sql.fetchall(
            f"""SELECT enrolled_month, COUNT(*) FROM analytics_cust
                WHERE enrolled_month >= %s AND enrolled_day <= {p.as_of_number} GROUP BY enrolled_month""",
            [first],
        )
    )
    for kind, (sizes, active, last) in counts.items():
        for cohort, size in sorted(sizes.items()):
            for k in range(0, current - cohort + 1):
                later = sum(n for (c, j), n in last.items() if c == cohort and j >= k)
                out.append(
                    {
                        "kind": kind,
                        "cohort": sql.month_start(cohort),
                        "period": k,
                        "size": size,
                        "active": active.get((cohort, k), 0),
                        "active_or_later": later,
                        "complete": cohort + k <= complete_through,
                    }
                )
    return out


# --- Points: liability and redemption -----------------------------------------------------------------


def points_metrics(p: Parameters) -> list[dict]:
    """Outstanding points at the end of the as-of date and their expected cost
    (outstanding × (1 − breakage) × cost of a point, breakage = expired ÷ (expired +
    redeemed) so far), and the monthly redemption rate (points redeemed, net of returned
    vouchers, ÷ points issued by purchases and bonuses in the month). METRICS.md does not
    define these two; this is the usual definition."""
    end = sql.timestamp_param(sql.local_midnight(p.as_of + dt.timedelta(days=1)))
    # One pass over the ledger: balances per account, and the totals by kind with them.
    outstanding, accounts, redeemed, returned, expired = sql.fetchone(
        """
        SELECT COALESCE(SUM(CASE WHEN b > 0 THEN b ELSE 0 END), 0), COUNT(*), COALESCE(-SUM(r), 0),
               COALESCE(SUM(ret), 0), COALESCE(-SUM(e), 0)
        FROM (SELECT account_id, SUM(points) AS b,
                     SUM(CASE WHEN kind = 'redeem' THEN points ELSE 0 END) AS r,
                     SUM(CASE WHEN kind = 'reversal' AND redemption_id IS NOT NULL THEN points ELSE 0 END)
                         AS ret,
                     SUM(CASE WHEN kind = 'expire' THEN points ELSE 0 END) AS e
              FROM rewards_ledgerentry WHERE created_at < %s
              GROUP BY account_id) x
        """,
        [end],
    )
    net_redeemed = float(redeemed) - float(returned)
    breakage = ratio(expired, float(expired) + net_redeemed)
    expected_points = float(outstanding) * (1 - (breakage or 0))
    out = [
        _metric(
            "points_outstanding",
            "asof",
            None,
            p.as_of,
            "all",
            None,
            None,
            value=float(outstanding),
            accounts=accounts,
        ),
        _metric("points_breakage", "asof", None, p.as_of, "all", expired, float(expired) + net_redeemed),
        _metric(
            "points_liability",
            "asof",
            None,
            p.as_of,
            "all",
            None,
            None,
            value=expected_points * p.point_cost,
            expected_points=expected_points,
            point_cost=p.point_cost,
            currency=p.currency,
        ),
    ]
    first = p.as_of_month - PERIODS_BACK["month"]
    sums = """SUM(CASE WHEN kind IN ('earn', 'bonus') THEN points ELSE 0 END),
              -SUM(CASE WHEN kind = 'redeem' THEN points ELSE 0 END),
              SUM(CASE WHEN kind = 'reversal' AND redemption_id IS NOT NULL THEN points ELSE 0 END)"""
    kinds = "kind IN ('earn', 'bonus', 'redeem', 'reversal')"
    if sql.is_postgres():
        # The month of an entry by where its moment falls among the months' first local
        # midnights (a binary search), not by converting millions of timestamps to local dates.
        starts = [sql.local_midnight(sql.month_start(m)) for m in range(first, p.as_of_month + 1)]
        rows = sql.fetchall(
            f"""
            SELECT %s - 1 + width_bucket(created_at, %s::timestamptz[]) AS m, {sums}
            FROM rewards_ledgerentry WHERE created_at >= %s AND created_at < %s AND {kinds}
            GROUP BY 1
            """,
            [first, starts, starts[0], end],
        )
    else:
        local_month = sql.month_number_sql(sql.local_day_sql("created_at"))
        rows = sql.fetchall(
            f"""
            SELECT m, {sums}
            FROM (SELECT {local_month} AS m, kind, points, redemption_id FROM rewards_ledgerentry
                  WHERE created_at < %s AND {kinds}) x
            WHERE m >= %s GROUP BY m
            """,
            [end, first],
        )
    by_month = {m: (issued, redeemed_m, returned_m) for m, issued, redeemed_m, returned_m in rows}
    for month in range(first, p.as_of_month + 1):
        issued, redeemed_m, returned_m = by_month.get(month, (0, 0, 0))
        net = float(redeemed_m or 0) - float(returned_m or 0)
        out.append(
            _metric(
                "redemption_rate",
                "month",
                sql.month_start(month),
                sql.month_end(month),
                "all",
                net,
                float(issued or 0),
                complete=sql.month_end(month) <= p.as_of,
            )
        )
    return out


# --- Acquisition cost ----------------------------------------------------------------------


def acquisition_metrics(p: Parameters, run_id: int) -> list[dict]:
    """CAC per month = acquisition spend ÷ members who enrolled that month; and over the
    trailing 12 months, with the CLV : CAC ratio (mean predicted CLV of the members who
    enrolled in those months ÷ CAC; historical CLV when no model was fitted)."""
    from .models import MonthlyCost

    first = p.as_of_month - PERIODS_BACK["month"]
    enrolled = dict(
        sql.fetchall(
            f"""SELECT enrolled_month, COUNT(*) FROM analytics_cust
                WHERE enrolled_month >= %s AND enrolled_day <= {p.as_of_number} GROUP BY enrolled_month""",
            [first],
        )
    )
    spend = {
        sql.month_number(month): float(amount)
        for month, amount in MonthlyCost.objects.filter(
            kind=MonthlyCost.Kind.ACQUISITION, month__gte=sql.month_start(first), month__lte=p.as_of
        ).values_list("month", "amount")
    }
    out = []
    for month in range(first, p.as_of_month + 1):
        new = enrolled.get(month, 0)
        out.append(
            _metric(
                "new_members",
                "month",
                sql.month_start(month),
                sql.month_end(month),
                "all",
                None,
                None,
                value=new,
                complete=sql.month_end(month) <= p.as_of,
            )
        )
        if month in spend:
            out.append(
                _metric(
                    "cac",
                    "month",
                    sql.month_start(month),
                    sql.month_end(month),
                    "all",
                    spend[month],
                    new,
                    complete=sql.month_end(month) <= p.as_of,
                )
            )
    trailing = range(p.as_of_month - 11, p.as_of_month + 1)
    months_with_spend = [m for m in trailing if m in spend]
    total_spend = sum(spend[m] for m in months_with_spend)
    total_new = sum(enrolled.get(m, 0) for m in months_with_spend)
    cac = ratio(total_spend, total_new) if months_with_spend else None
    out.append(
        _metric(
            "cac",
            "window",
            sql.month_start(trailing[0]),
            p.as_of,
            "all",
            total_spend if months_with_spend else None,
            total_new if months_with_spend else None,
            days=365,
        )
    )
    value_row = sql.fetchone(
        f"""
        SELECT AVG(s.predicted_clv), AVG(s.historical_clv), COUNT(*)
        FROM analytics_customerscore s JOIN analytics_cust c ON c.customer_id = s.customer_id
        WHERE s.run_id = %s AND c.enrolled_month >= {trailing[0]} AND c.enrolled_day <= {p.as_of_number}
        """,
        [run_id],
    )
    clv_value = (
        value_row[0] if value_row and value_row[0] is not None else (value_row[1] if value_row else None)
    )
    out.append(
        _metric(
            "clv_cac",
            "window",
            sql.month_start(trailing[0]),
            p.as_of,
            "all",
            None if clv_value is None else float(clv_value),
            cac,
            basis="predicted" if value_row and value_row[0] is not None else "historical",
        )
    )
    return out


# --- Satisfaction -----------------------------------------------------------------------------


def satisfaction_metrics(p: Parameters) -> list[dict]:
    """NPS (% promoters 9–10 − % detractors 0–6, ×100) and CSAT (% of 4–5, and the mean) per
    month and over all answers to the as-of date, per survey and for all surveys of a kind."""
    end = sql.timestamp_param(sql.local_midnight(p.as_of + dt.timedelta(days=1)))
    local_month = sql.month_number_sql(sql.local_day_sql("r.answered_at"))
    rows = sql.fetchall(
        f"""
        SELECT s.kind, s.id, {local_month} AS m, COUNT(*),
               SUM(CASE WHEN r.score >= 9 THEN 1 ELSE 0 END), SUM(CASE WHEN r.score <= 6 THEN 1 ELSE 0 END),
               SUM(CASE WHEN r.score >= 4 THEN 1 ELSE 0 END), SUM(r.score)
        FROM analytics_surveyresponse r JOIN analytics_survey s ON s.id = r.survey_id
        WHERE r.answered_at < %s
        GROUP BY s.kind, s.id, {local_month}
        """,
        [end],
    )
    groups: dict[tuple, list[float]] = {}
    for kind, survey_id, month, n, promoters, detractors, top, total in rows:
        for segment in ("all", str(survey_id)):
            for period in (("month", month), ("asof", None)):
                row = groups.setdefault((kind, segment, *period), [0, 0, 0, 0, 0])
                for i, value in enumerate((n, promoters, detractors, top, total)):
                    row[i] += float(value or 0)
    out = []
    for (kind, segment, period, month), (n, promoters, detractors, top, total) in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2], item[0][3] or 0)
    ):
        start = sql.month_start(month) if month is not None else None
        end_day = sql.month_end(month) if month is not None else p.as_of
        complete = end_day <= p.as_of
        if kind == "nps":
            value = (promoters - detractors) / n * 100 if n else None
            out.append(
                _metric(
                    "nps",
                    period,
                    start,
                    end_day,
                    segment,
                    promoters - detractors,
                    n,
                    value=value,
                    complete=complete,
                    promoters=promoters,
                    detractors=detractors,
                    answers=n,
                )
            )
        else:
            out.append(
                _metric(
                    "csat",
                    period,
                    start,
                    end_day,
                    segment,
                    top,
                    n,
                    value=top / n * 100 if n else None,
                    complete=complete,
                    mean=total / n if n else None,
                    answers=n,
                )
            )
    return out


# --- Customer lifetime value summaries ------------------------------------------------------------


def clv_metrics(p: Parameters, run_id: int, series: list[dict]) -> list[dict]:
    """Historical CLV (mean net revenue to date × margin), the simple predictive CLV
    (AOV × purchase days per year × margin ÷ annual churn), the model-based CLV (mean,
    median, distribution) and the top customers are read from this run's scores."""
    out = []
    row = sql.fetchone(
        """SELECT COUNT(*), AVG(historical_clv), AVG(predicted_clv), COUNT(predicted_clv),
                  AVG(p_alive), SUM(expected_30), SUM(expected_90), SUM(expected_365),
                  MIN(predicted_clv), MAX(predicted_clv), MIN(historical_clv), MAX(historical_clv)
           FROM analytics_customerscore WHERE run_id = %s""",
        [run_id],
    )
    shoppers, hist, predicted, predicted_n, p_alive, e30, e90, e365 = row[:8]
    out.append(
        _metric(
            "historical_clv",
            "asof",
            None,
            p.as_of,
            "all",
            None,
            None,
            value=None if hist is None else float(hist),
            customers=shoppers,
            margin=p.margin,
        )
    )
    out.append(
        _metric(
            "predicted_clv",
            "asof",
            None,
            p.as_of,
            "all",
            None,
            None,
            value=None if predicted is None else float(predicted),
            customers=predicted_n,
            horizon_months=p.clv_horizon_months,
        )
    )
    out.append(
        _metric(
            "p_alive",
            "asof",
            None,
            p.as_of,
            "all",
            None,
            None,
            value=None if p_alive is None else float(p_alive),
        )
    )
    for days, total in ((30, e30), (90, e90), (365, e365)):
        out.append(
            _metric(
                "expected_purchase_days",
                "asof",
                None,
                p.as_of,
                str(days),
                None,
                None,
                value=None if total is None else float(total),
            )
        )
    # Simple predictive CLV from the trailing year and the mean annualised churn of the last
    # three complete months (a year of CRR history is rarely there).
    window = {(m["metric"], m["segment"]): m["value"] for m in series if m["period"] == "window"}
    aov = window.get(("aov", "all:365"))
    frequency = window.get(("frequency", "all:365"))
    monthly = [
        m["value"]
        for m in series
        if m["metric"] == "churn"
        and m["period"] == "month"
        and m["segment"] == "all"
        and m["complete"]
        and m["value"] is not None
    ][-3:]
    annual_churn = 1 - (1 - sum(monthly) / len(monthly)) ** 12 if monthly else None
    simple = None
    if aov is not None and frequency is not None and annual_churn:
        simple = aov * frequency * p.margin / annual_churn
    out.append(
        _metric(
            "simple_clv",
            "asof",
            None,
            p.as_of,
            "all",
            None,
            None,
            value=simple,
            aov=aov,
            frequency_per_year=frequency,
            annual_churn=annual_churn,
            margin=p.margin,
        )
    )
    # Distribution of predicted CLV (or historical when there is no model), in ten bins.
    column = "predicted_clv" if predicted_n else "historical_clv"
    bounds = row[8:10] if predicted_n else row[10:12]
    if bounds and bounds[0] is not None:
        low, high = float(bounds[0]), float(bounds[1])
        width = (high - low) / 10 or 1.0
        bins = sql.fetchall(
            f"""SELECT CASE WHEN b > 9 THEN 9 ELSE b END, COUNT(*) FROM
                (SELECT {sql.floor_int_sql(f"({column} - %s) / %s")} AS b FROM analytics_customerscore
                 WHERE run_id = %s AND {column} IS NOT NULL) x GROUP BY CASE WHEN b > 9 THEN 9 ELSE b END""",
            [low, width, run_id],
        )
        counts = dict(bins)
        out.append(
            _metric(
                "clv_distribution",
                "asof",
                None,
                p.as_of,
                column,
                None,
                None,
                value=float(sum(counts.values())),
                bins=[
                    {"from": low + i * width, "to": low + (i + 1) * width, "customers": int(counts.get(i, 0))}
                    for i in range(10)
                ],
            )
        )
    return out
