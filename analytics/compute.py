"""One computation run: work tables from the rollup, the model fits, the per-customer
scores, then metrics, cohorts and the program's effect, all written as snapshot rows of
an AnalyticsRun.

Work tables are temporary (per connection) and built with INSERT … SELECT:
- analytics_cust: every customer, with the day and month of enrollment and whether a
  member at the as-of date;
- analytics_cm: per customer and month up to the as-of date (the monthly rollup, and the
  as-of month from the daily one), purchase days, net revenue, receipts, first, second and
  last day, net revenue of repeat days, membership and enrollment month (members at the
  as-of date);
- analytics_cs: per shopper (from analytics_cm), first / second / last purchase day, purchase
  days, net revenue, net revenue of the repeat days, first and last month, membership.
Nothing loops over customers in Python: the fits read (x, t_x, T) grouped with counts and
the predictions are joined back by those three numbers.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

import datetime as dt
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


def work_tables_build(p: Parameters) -> dict:
    """Build analytics_cust, analytics_cm and analytics_cs for the as-of date."""
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
    sql.temp_table(
        "analytics_cm",
        f"customer_id bigint, month integer, is_member integer, enrolled_month integer, days integer, "
        f"net {money}, receipts integer, last_day integer, first_day integer, second_day integer, "
        f"repeat_net {money}",
    )
    columns = (
        "customer_id, month, is_member, enrolled_month, days, net, receipts, last_day, first_day, "
        "second_day, repeat_net"
    )
    # Months before the as-of month from the monthly rollup (every day of them is before the
    # as-of date) ...
    with sql.planner(nestloop=False):
        sql.execute(
            f"""
            INSERT INTO analytics_cm ({columns})
            SELECT m.customer_id, m.month_number, c.is_member,
                   CASE WHEN c.is_member = 1 THEN c.enrolled_month END, m.days, m.net_amount, m.receipts,
                   m.last_day_number, m.first_day_number, m.second_day_number, m.repeat_net_amount
            FROM analytics_customermonth m JOIN analytics_cust c ON c.customer_id = m.customer_id
            WHERE m.month_number < %s
            """,
            [p.as_of_month],
        )
    # ... and the as-of month summed from its days up to the as-of date.
    sql.execute(
        f"""
        INSERT INTO analytics_cm ({columns})
        SELECT d.customer_id, d.month_number, c.is_member,
               CASE WHEN c.is_member = 1 THEN c.enrolled_month END, COUNT(*), SUM(d.net_amount),
               SUM(d.receipts), MAX(d.day_number), MIN(d.day_number),
               MIN(CASE WHEN d.seq = 2 THEN d.day_number END),
               SUM(CASE WHEN d.seq > 1 THEN d.net_amount ELSE 0 END)
        FROM analytics_customerday d JOIN analytics_cust c ON c.customer_id = d.customer_id
        WHERE d.day_number BETWEEN %s AND %s
        GROUP BY d.customer_id, d.month_number, c.is_member, c.enrolled_month
        """,
        [sql.day_number(sql.month_start(p.as_of_month)), a],
    )
    if sql.is_postgres():
        sql.execute("CREATE INDEX ON analytics_cm (customer_id, month)", [])
        sql.execute("ANALYZE analytics_cm", [])
    sql.temp_table(
        "analytics_cs",
        "customer_id bigint PRIMARY KEY, first_day integer, second_day integer, last_day integer, "
        f"n integer, net {money}, repeat_net {money}, first_month integer, last_month integer, "
        "is_member integer",
    )
    # Per customer from the months (half the rows of the days), in the months' index order.
    with sql.planner(hashagg=False):
        sql.execute(
            """
            INSERT INTO analytics_cs (customer_id, first_day, second_day, last_day, n, net, repeat_net,
                                      first_month, last_month, is_member)
            SELECT customer_id, MIN(first_day), MIN(second_day), MAX(last_day), SUM(days), SUM(net),
                   SUM(repeat_net), MIN(month), MAX(month), MAX(is_member)
            FROM analytics_cm GROUP BY customer_id
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
    fits = Fits()
    a = p.as_of_number
    rows = sql.fetchall(
        """
        SELECT n - 1, last_day - first_day, %s - first_day, COUNT(*)
        FROM analytics_cs GROUP BY n - 1, last_day - first_day, %s - first_day
        """,
        [a, a],
    )
    if rows:
        data = np.array(rows, dtype=float)
        fits.groups = data
        fits.bgnbd = clv.bgnbd_fit(data[:, 0], data[:, 1], data[:, 2], weights=data[:, 3])
        fits.timings["bgnbd_rows"] = len(rows)
    # As a float from the database: the same number as float() of the exact quotient, without
    # a Python Decimal per customer.
    mean_spend = "(repeat_net / (n - 1))::float8" if sql.is_postgres() else "repeat_net / (n - 1)"
    spend = sql.fetchall(f"SELECT n - 1, {mean_spend} FROM analytics_cs WHERE n > 1 AND repeat_net > 0", [])
    if spend:
        data = np.array(spend, dtype=float)
        fits.gamma_gamma = clv.gamma_gamma_fit(data[:, 0], data[:, 1])
    return fits


def _usable(fit: clv.Fit | None, *names: str) -> bool:
    return (
        fit is not None
        and fit.converged
        and all(np.isfinite(fit.params.get(n, np.nan)) and fit.params[n] > 0 for n in names)
    )


def predictions_table_build(p: Parameters, fits: Fits) -> bool:
    """analytics_pred: P(alive), expected purchase days and discounted expected purchase days
    per distinct (x, t_x, T). Returns False (and an empty table) without a usable BG/NBD fit."""
    sql.temp_table(
        "analytics_pred",
        "x integer, tx integer, t integer, p_alive double precision, e30 double precision, "
        "e90 double precision, e365 double precision, dep double precision",
    )
    if not _usable(fits.bgnbd, "r", "alpha", "a", "b") or fits.bgnbd.params["a"] <= 1e-9:
        return False
    a = p.as_of_number
    if fits.groups is not None:
        data = fits.groups[:, :3]
    else:
        rows = sql.fetchall(
            "SELECT DISTINCT n - 1, last_day - first_day, %s - first_day FROM analytics_cs", [a]
        )
        data = np.array(rows, dtype=float).reshape(-1, 3)
    x, tx, t = data[:, 0], data[:, 1], data[:, 2]
    sql.arrays_insert(
        "analytics_pred",
        {
            "x": x.astype(np.int32),
            "tx": tx.astype(np.int32),
            "t": t.astype(np.int32),
            **predictions(p, fits.bgnbd.params, x, tx, t),
        },
    )
    if sql.is_postgres():
        sql.execute("CREATE INDEX ON analytics_pred (x, tx, t)", [])
        sql.execute("ANALYZE analytics_pred", [])
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
    # A hash join with the predictions: the planner's choices, an index probe per customer or
    # a sort of all customers on the three keys for a merge join, take several times as long.
    with sql.planner(nestloop=False, mergejoin=False):
        return sql.execute(
            f"""
            INSERT INTO analytics_customerscore
                (run_id, customer_id, is_member, first_day, last_day, purchase_days, frequency, recency, age,
                 net_revenue, repeat_mean_spend, historical_clv, p_alive, expected_30, expected_90,
                 expected_365, expected_spend, predicted_clv, rfm_r, rfm_f, rfm_m, rfm_score, churn_risk)
            SELECT %s, customer_id, is_member = 1, {sql.date_sql("first_day")}, {sql.date_sql("last_day")}, n,
                   n - 1, last_day - first_day, {a} - first_day, net, rms, hist, p_alive, e30, e90, e365,
                   {sql.money_sql("spend")}, {sql.money_sql(f"dep * spend * {margin}")},
                   r, f, m, r + f + m, risk
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
