"""One computation run: work tables from the rollup, the model fits, the per-customer
scores, then metrics, cohorts and the program's effect, all written as snapshot rows of
an AnalyticsRun.

Work tables are temporary (per connection) and built with INSERT … SELECT:
- analytics_cust: every customer, with the day and month of enrollment and whether a
  member at the as-of date;
- analytics_cs: per shopper (from the months of `months_sql`: the monthly rollup, and the
  as-of month from the daily one), first / second / last purchase day, purchase days, net
  revenue, net revenue of the repeat days, first and last month, membership and enrollment
  month (members at the as-of date).
Nothing loops over customers in Python: the fits read (x, t_x, T) grouped with counts and
the predictions are joined back by those three numbers.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

import contextlib
import datetime as dt
import re
from dataclasses import asdict, dataclass, field

import numpy as np
from django.conf import settings

from . import clv, sql
from .models import AnalyticsSettings, ModelFit


@dataclass
class Parameters:
    as_of: dt.date
    margin: float = 0.3
    annual_discount_rate: float = 0.1
    clv_horizon_months: int = 12
    churn_days: int = 90
    point_cost: float = 0.05
    currency: str = "DKK"
    windows: tuple[int, ...] = (90, 365)
    months_back: int = 24
    effect_months: int = 6
    effect_cohorts: int = 12
    effect_controls_per_cohort: int = 20000
    bootstrap: int = 400
    seed: int = 20050101

    @classmethod
    def from_settings(cls, *, as_of: dt.date, **overrides) -> Parameters:
        current = AnalyticsSettings.current()
        values = {
            "margin": float(current.margin),
            "annual_discount_rate": float(current.annual_discount_rate),
            "clv_horizon_months": current.clv_horizon_months,
            "churn_days": current.churn_days,
            "point_cost": float(current.point_cost),
            "currency": settings.PROGRAM_CURRENCY,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(as_of=as_of, **values)

    def as_json(self) -> dict:
        data = asdict(self)
        data["as_of"] = self.as_of.isoformat()
        data["windows"] = list(self.windows)
        return data

    @property
    def as_of_number(self) -> int:
        return sql.day_number(self.as_of)

    @property
    def as_of_month(self) -> int:
        return sql.month_number(self.as_of)

    @property
    def monthly_discount(self) -> float:
        return (1 + self.annual_discount_rate) ** (1 / 12) - 1


@dataclass
class Fits:
    bgnbd: clv.Fit | None = None
    gamma_gamma: clv.Fit | None = None
    timings: dict = field(default_factory=dict)
    # The BG/NBD inputs grouped: distinct (x, t_x, T) and their customers (the predictions
    # are made per group too).
    groups: np.ndarray | None = None


# --- Work tables ----------------------------------------------------------------------------


MONTH_COLUMNS = (
    "customer_id, month_number, days, net_amount, receipts, first_day_number, second_day_number, "
    "last_day_number, repeat_net_amount"
)


def months_sql(p: Parameters) -> str:
    """SQL of every customer's purchase months up to the as-of date: the months before the
    as-of month straight from the monthly rollup (every day of them is before the as-of
    date), and the as-of month from analytics_asof_month (summed from its days up to the
    as-of date by work_tables_build). Columns: customer_id, month, days, net, receipts,
    first_day, second_day, last_day, repeat_net.

    Read where it is used rather than copied into a work table (the copy of 4.5 million rows
    and its index took longer than the reads it saved). The shape is for PostgreSQL's planner:
    a UNION ALL of two plain tables, with the month condition outside, becomes one appendrel
    that it can read in (customer, month) order by merging the two primary-key indexes
    (a condition inside a branch would keep the branch a subquery, sorted as a whole)."""
    columns = (
        "customer_id, month_number AS month, days, net_amount AS net, receipts, "
        "first_day_number AS first_day, second_day_number AS second_day, last_day_number AS last_day, "
        "repeat_net_amount AS repeat_net"
    )
    return f"""
        SELECT {columns}
        FROM (SELECT 0 AS part, {MONTH_COLUMNS} FROM analytics_customermonth
              UNION ALL
              SELECT 1 AS part, {MONTH_COLUMNS} FROM analytics_asof_month) u
        WHERE part = 1 OR month_number < {p.as_of_month}
    """


@contextlib.contextmanager
def months_in_order(**more: bool):
    """Planner settings for reading months_sql in (customer, month) order: the two indexes
    merged, instead of sorting five million rows, which the planner prefers because it does
    not know that the monthly rollup is stored in that order; and joins that keep the order
    (merge joins, index probes)."""
    with sql.planner(sort=False, hashjoin=False, **more):
        yield


def work_tables_build(p: Parameters) -> dict:
    """Build analytics_cust and analytics_cs for the as-of date."""
    sql.prepare()
    a = p.as_of_number
    enrolled_day = sql.day_number_sql(sql.local_day_sql("enrolled_at"))
    enrolled_month = sql.month_number_sql(sql.local_day_sql("enrolled_at"))
    sql.temp_table(
        "analytics_cust",
        "customer_id bigint PRIMARY KEY, enrolled_day integer, enrolled_month integer, is_member integer",
    )
    sql.execute(
        f"""
        INSERT INTO analytics_cust (customer_id, enrolled_day, enrolled_month, is_member)
        SELECT id, ed, em, CASE WHEN ed IS NOT NULL AND ed <= %s THEN 1 ELSE 0 END
        FROM (SELECT id,
                     CASE WHEN enrolled_at IS NULL THEN NULL ELSE {enrolled_day} END AS ed,
                     CASE WHEN enrolled_at IS NULL THEN NULL ELSE {enrolled_month} END AS em
              FROM accounts_customer) c
        """,
        [a],
    )
    if sql.is_postgres():
        sql.execute("ANALYZE analytics_cust", [])
    money = sql.money_type()
    # The as-of month up to the as-of date, shaped like the monthly rollup (same column types:
    # see months_sql).
    amount = "numeric(14, 2)" if sql.is_postgres() else money
    sql.temp_table(
        "analytics_asof_month",
        f"customer_id bigint NOT NULL, month_number integer NOT NULL, days integer NOT NULL, "
        f"net_amount {amount} NOT NULL, receipts integer NOT NULL, first_day_number integer NOT NULL, "
        f"second_day_number integer, last_day_number integer NOT NULL, repeat_net_amount {amount} NOT NULL, "
        "PRIMARY KEY (customer_id, month_number)",
    )
    sql.execute(
        f"""
        INSERT INTO analytics_asof_month ({MONTH_COLUMNS})
        SELECT customer_id, month_number, COUNT(*), SUM(net_amount), SUM(receipts), MIN(day_number),
               MIN(CASE WHEN seq = 2 THEN day_number END), MAX(day_number),
               SUM(CASE WHEN seq > 1 THEN net_amount ELSE 0 END)
        FROM analytics_customerday WHERE day_number BETWEEN %s AND %s
        GROUP BY customer_id, month_number
        """,
        [sql.day_number(sql.month_start(p.as_of_month)), a],
    )
    if sql.is_postgres():
        sql.execute("ANALYZE analytics_asof_month", [])
    sql.temp_table(
        "analytics_cs",
        "customer_id bigint PRIMARY KEY, first_day integer, second_day integer, last_day integer, "
        f"n integer, net {money}, repeat_net {money}, first_month integer, last_month integer, "
        "is_member integer, enrolled_month integer",
    )
    # Per shopper, from the months (half the rows of the days) in their index order; membership
    # and the enrollment month (of members at the as-of date) joined to the million sums.
    with months_in_order(hashagg=False, nestloop=False):
        sql.execute(
            f"""
            INSERT INTO analytics_cs (customer_id, first_day, second_day, last_day, n, net, repeat_net,
                                      first_month, last_month, is_member, enrolled_month)
            SELECT m.customer_id, m.first_day, m.second_day, m.last_day, m.n, m.net, m.repeat_net,
                   m.first_month, m.last_month, c.is_member,
                   CASE WHEN c.is_member = 1 THEN c.enrolled_month END
            FROM (SELECT customer_id, MIN(first_day) AS first_day, MIN(second_day) AS second_day,
                         MAX(last_day) AS last_day, SUM(days) AS n, SUM(net) AS net,
                         SUM(repeat_net) AS repeat_net, MIN(month) AS first_month, MAX(month) AS last_month
                  FROM ({months_sql(p)}) months GROUP BY customer_id) m
            JOIN analytics_cust c ON c.customer_id = m.customer_id
            """,
            [],
        )
    if sql.is_postgres():
        sql.execute("ANALYZE analytics_cs", [])
    shoppers = sql.fetchone("SELECT COUNT(*) FROM analytics_cs", [])[0]
    return {"shoppers": shoppers}


# --- Model fits and predictions --------------------------------------------------------------


def fits_compute(p: Parameters) -> Fits:
    """BG/NBD on (x, t_x, T) in days, grouped; Gamma-Gamma on repeat customers' mean spend."""
    return fits_from_inputs(*fits_inputs(p))


def fits_inputs(p: Parameters) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The models' inputs from analytics_cs: distinct (x, t_x, T) with their customers, and
    (repeat purchase days, mean spend of the repeat days) of repeat customers with spend."""
    a = p.as_of_number
    rows = sql.fetchall(
        """
        SELECT n - 1, last_day - first_day, %s - first_day, COUNT(*)
        FROM analytics_cs GROUP BY n - 1, last_day - first_day, %s - first_day
        """,
        [a, a],
    )
    # As a float from the database: the same number as float() of the exact quotient, without
    # a Python Decimal per customer.
    mean_spend = "(repeat_net / (n - 1))::float8" if sql.is_postgres() else "repeat_net / (n - 1)"
    spend = sql.fetchall(f"SELECT n - 1, {mean_spend} FROM analytics_cs WHERE n > 1 AND repeat_net > 0", [])
    return (
        np.array(rows, dtype=float) if rows else None,
        np.array(spend, dtype=float) if spend else None,
    )


def fits_from_inputs(groups: np.ndarray | None, spend: np.ndarray | None) -> Fits:
    """Both fits, in Python alone (no database): see services._refresh, which runs them while
    PostgreSQL computes the monthly activity."""
    fits = Fits()
    if groups is not None:
        fits.groups = groups
        fits.bgnbd = clv.bgnbd_fit(groups[:, 0], groups[:, 1], groups[:, 2], weights=groups[:, 3])
        fits.timings["bgnbd_rows"] = len(groups)
    if spend is not None:
        fits.gamma_gamma = clv.gamma_gamma_fit(spend[:, 0], spend[:, 1])
    return fits


def _usable(fit: clv.Fit | None, *names: str) -> bool:
    return (
        fit is not None
        and fit.converged
        and all(np.isfinite(fit.params.get(n, np.nan)) and fit.params[n] > 0 for n in names)
    )


def predictions_arrays(p: Parameters, fits: Fits) -> dict[str, np.ndarray] | None:
    """Per distinct (x, t_x, T) of the fit's input: P(alive), expected purchase days and
    discounted expected purchase days (numpy, no database); None without a usable BG/NBD fit."""
    if not _usable(fits.bgnbd, "r", "alpha", "a", "b") or fits.bgnbd.params["a"] <= 1e-9:
        return None
    if fits.groups is None:
        return None
    data = fits.groups[:, :3]
    x, tx, t = data[:, 0], data[:, 1], data[:, 2]
    return {
        "x": x.astype(np.int32),
        "tx": tx.astype(np.int32),
        "t": t.astype(np.int32),
        **predictions(p, fits.bgnbd.params, x, tx, t),
    }


def predictions_table_build(p: Parameters, fits: Fits, arrays: dict | None = None) -> bool:
    """analytics_pred: P(alive), expected purchase days and discounted expected purchase days
    per distinct (x, t_x, T) (`arrays` when already computed). Returns False (and an empty
    table) without a usable BG/NBD fit."""
    sql.temp_table(
        "analytics_pred",
        "x integer, tx integer, t integer, p_alive double precision, e30 double precision, "
        "e90 double precision, e365 double precision, dep double precision",
    )
    arrays = arrays if arrays is not None else predictions_arrays(p, fits)
    if arrays is None:
        return False
    sql.arrays_insert("analytics_pred", arrays)
    if sql.is_postgres():
        sql.execute("ANALYZE analytics_pred", [])  # no index: the scores hash-join it
    return True


def fits_save(run, fits: Fits) -> None:
    for name, fit in ((ModelFit.Model.BGNBD, fits.bgnbd), (ModelFit.Model.GAMMA_GAMMA, fits.gamma_gamma)):
        if fit is None:
            continue
        ModelFit.objects.create(
            run=run,
            model=name,
            parameters=fit.params,
            log_likelihood=fit.log_likelihood if np.isfinite(fit.log_likelihood) else None,
            customers=fit.customers,
            converged=bool(fit.converged),
            time_unit="days",
            seconds=round(fit.seconds, 3),
            message=fit.message[:200],
        )


def spend_sql(gamma_gamma: dict | None) -> str:
    """SQL for the expected spend per purchase day of customer `cs` (Gamma-Gamma: a weighted
    mean of the population mean and the customer's own mean of repeat days), NULL without a
    usable fit. The full refresh and the incremental update share it, so both round alike."""
    if not gamma_gamma or not gamma_gamma.get("q", 0) > 1:
        return "CAST(NULL AS DOUBLE PRECISION)"
    gp, gq, gv = gamma_gamma["p"], gamma_gamma["q"], gamma_gamma["v"]
    population = gp * gv / (gq - 1)
    return (
        f"(({gq} - 1) / ({gp} * (cs.n - 1) + {gq} - 1) * {population} "
        f"+ ({gp} * (cs.n - 1)) / ({gp} * (cs.n - 1) + {gq} - 1) "
        f"* (CASE WHEN cs.n > 1 THEN cs.repeat_net / (cs.n - 1) ELSE 0 END))"
    )


def risk_sql(p: Parameters, *, model: bool) -> str:
    """SQL for the churn-risk label of customer `cs` with predictions `pr` (see scores_insert)."""
    a, tau = p.as_of_number, p.churn_days
    tau_rule = (
        f"CASE WHEN {a} - cs.last_day > {tau} THEN 'churned' "
        f"WHEN {a} - cs.last_day > {2 * tau // 3} THEN 'high' "
        f"WHEN {a} - cs.last_day > {tau // 3} THEN 'medium' ELSE 'low' END"
    )
    if not model:
        return tau_rule
    return (
        f"CASE WHEN cs.n = 1 OR pr.p_alive IS NULL THEN {tau_rule} "
        "WHEN pr.p_alive < 0.5 THEN 'churned' WHEN pr.p_alive < 0.7 THEN 'high' "
        "WHEN pr.p_alive < 0.9 THEN 'medium' ELSE 'low' END"
    )


def predictions(p: Parameters, params: dict, x, tx, t) -> dict[str, np.ndarray]:
    """P(alive), expected purchase days in 30 / 90 / 365 days and discounted expected purchase
    days over the CLV horizon, per (x, t_x, T); non-finite values as NaN (stored as NULL)."""
    columns = {
        "p_alive": clv.bgnbd_p_alive(params, x, tx, t),
        "e30": clv.bgnbd_expected(params, 30, x, tx, t),
        "e90": clv.bgnbd_expected(params, 90, x, tx, t),
        "e365": clv.bgnbd_expected(params, 365, x, tx, t),
        "dep": clv.discounted_expected_purchases(
            params, x, tx, t, months=p.clv_horizon_months, monthly_discount=p.monthly_discount
        ),
    }
    return {name: np.where(np.isfinite(c), c, np.nan) for name, c in columns.items()}


def scores_insert(run, p: Parameters, fits: Fits, *, model: bool) -> int:
    """One CustomerScore per shopper, in one INSERT … SELECT, in customer order: the (customer,
    run) index then takes the million new entries in one ordered walk instead of a million
    random page visits.

    Churn risk says which rule it used (run.parameters["churn_rule"]): with a fitted model,
    P(alive) < 0.5 is churned, < 0.7 high, < 0.9 medium; one-time buyers, whom BG/NBD
    considers alive by construction (P(alive) = 1 without a repeat purchase), and every
    customer when no model could be fitted, use the τ rule: no purchase day for τ days is
    churned, for 2τ/3 high, τ/3 medium (METRICS.md "Churned (non-contractual)").
    """
    a = p.as_of_number
    gg = fits.gamma_gamma
    spend = spend_sql(gg.params if model and _usable(gg, "p", "q", "v") else None)
    risk = risk_sql(p, model=model)
    margin = p.margin
    shoppers = sql.fetchone("SELECT COUNT(*) FROM analytics_cs", [])[0]
    if not shoppers:
        return 0
    # Quintile scores 1 … 5 as ⌈5 × cumulative share⌉: ties share a score, the top is always 5.
    # The cumulative count of recency and frequency per distinct value (a thousand days, a few
    # hundred counts) is joined back instead of sorting a million rows for each; monetary value
    # is nearly unique per customer and keeps its window.
    quintile = f"(5 * {{}} + {shoppers} - 1) / {shoppers}"
    partition = scores_partition_create(run)
    table, ids, next_id = "analytics_customerscore", "", ""
    if partition:
        # Ids in customer order from a block taken from the identity sequence at once (nextval
        # per row took two seconds). Only this run, under the analytics lock, writes scores.
        last = sql.fetchone(
            "SELECT setval(pg_get_serial_sequence('analytics_customerscore', 'id'), "
            "nextval(pg_get_serial_sequence('analytics_customerscore', 'id')) + %s - 1)",
            [shoppers],
        )[0]
        table, ids = partition, "id, "
        next_id = f"{int(last) - shoppers} + ROW_NUMBER() OVER (ORDER BY customer_id), "
    # A hash join with the predictions: the planner's choices, an index probe per customer or
    # a sort of all customers on the three keys for a merge join, take several times as long.
    with sql.planner(nestloop=False, mergejoin=False):
        inserted = sql.execute(
            f"""
            INSERT INTO {table}
                ({ids}run_id, customer_id, is_member, first_day, last_day, purchase_days, frequency, recency,
                 age, net_revenue, repeat_mean_spend, historical_clv, p_alive, expected_30, expected_90,
                 expected_365, expected_spend, predicted_clv, rfm_r, rfm_f, rfm_m, rfm_score, churn_risk)
            SELECT {next_id}%s, customer_id, is_member = 1, {sql.date_sql("first_day")},
                   {sql.date_sql("last_day")}, n, n - 1, last_day - first_day, {a} - first_day, net, rms,
                   hist, p_alive, e30, e90, e365, {sql.money_sql("spend")},
                   {sql.money_sql(f"dep * spend * {margin}")}, r, f, m, r + f + m, risk
            FROM (
                SELECT cs.customer_id, cs.is_member, cs.first_day, cs.last_day, cs.n, cs.net,
                       CASE WHEN cs.n > 1 THEN {sql.money_sql("cs.repeat_net / (cs.n - 1)")} END AS rms,
                       {sql.money_sql(f"cs.net * {margin}")} AS hist,
                       pr.p_alive, pr.e30, pr.e90, pr.e365, pr.dep, {spend} AS spend,
                       {quintile.format("recency.le")} AS r, {quintile.format("frequency.le")} AS f,
                       {quintile.format("COUNT(*) OVER (ORDER BY cs.net)")} AS m, {risk} AS risk
                FROM analytics_cs cs
                JOIN (SELECT last_day, CAST(SUM(COUNT(*)) OVER (ORDER BY last_day) AS BIGINT) AS le
                      FROM analytics_cs GROUP BY last_day) recency ON recency.last_day = cs.last_day
                JOIN (SELECT n, CAST(SUM(COUNT(*)) OVER (ORDER BY n) AS BIGINT) AS le
                      FROM analytics_cs GROUP BY n) frequency ON frequency.n = cs.n
                LEFT JOIN analytics_pred pr
                  ON pr.x = cs.n - 1 AND pr.tx = cs.last_day - cs.first_day AND pr.t = {a} - cs.first_day
            ) s
            ORDER BY customer_id
            """,
            [run.pk],
        )
    if partition:
        scores_partition_attach(run, partition)
    return inserted


def scores_prune(*, keep_runs: int) -> list[int]:
    """Forget the scores of all but the latest `keep_runs` completed full runs (at least one):
    a run's scores are a row per shopper, and nothing reads an older run's. Where the scores
    are partitioned by run (PostgreSQL, migration 0005) an old run's partition is dropped
    whole, as is the table of the runs from before partitioning once none of them is kept;
    other rows of old runs are deleted. The runs whose partitions were dropped."""
    from .models import AnalyticsRun, CustomerScore

    kept = list(
        AnalyticsRun.objects.filter(kind=AnalyticsRun.Kind.FULL, status=AnalyticsRun.Status.DONE)
        .order_by("-pk")
        .values_list("pk", flat=True)[: max(1, keep_runs)]
    )
    if not kept:
        return []
    partitioned = (
        sql.is_postgres()
        and sql.fetchone(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = 'analytics_customerscore'::regclass"
        )[0]
    )
    if not partitioned:
        CustomerScore.objects.exclude(run_id__in=kept).delete()
        return []
    dropped = []
    for (name,) in sql.fetchall(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'analytics_customerscore'::regclass"
    ):
        own = re.fullmatch(r"analytics_customerscore_run(\d+)", name)
        if own:
            if int(own[1]) not in kept:
                sql.execute(f"DROP TABLE {name}")
                dropped.append(int(own[1]))
        elif (
            name != "analytics_customerscore_default"
            and not sql.fetchone(f"SELECT EXISTS (SELECT 1 FROM {name} WHERE run_id = ANY(%s))", [kept])[0]
        ):
            sql.execute(f"DROP TABLE {name}")  # the runs from before partitioning, none kept
        else:
            sql.execute(f"DELETE FROM {name} WHERE run_id <> ALL(%s)", [kept])
    return sorted(dropped)


def scores_partition_create(run) -> str | None:
    """On PostgreSQL, where analytics_customerscore is partitioned by run (migration 0005): a
    table for this run's scores, shaped like the parent, without indexes; None elsewhere.
    Its CHECK constraint lets ATTACH PARTITION skip scanning the rows for their run."""
    if (
        not sql.is_postgres()
        or not sql.fetchone(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = 'analytics_customerscore'::regclass"
        )[0]
    ):
        return None
    name = f"analytics_customerscore_run{int(run.pk)}"
    sql.execute(
        f"CREATE TABLE {name} (LIKE analytics_customerscore INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    sql.execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_run CHECK (run_id = {int(run.pk)})")
    return name


def scores_partition_attach(run, name: str) -> None:
    """Attach the run's filled table as its partition. ATTACH builds each of the parent's
    indexes (primary key, (run, customer), (customer, run), top CLV) on it in one sorted pass:
    several times cheaper than a million insertions into each index of one shared table, and
    a fraction of the WAL. It locks the default partition (normally empty) until commit."""
    sql.execute(f"ALTER TABLE analytics_customerscore ATTACH PARTITION {name} FOR VALUES IN ({int(run.pk)})")
    sql.execute(f"ANALYZE {name}")
