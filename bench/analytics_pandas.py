#!/usr/bin/env python
"""The reference implementation for bench/analytics.py: the headline metrics of
/work/shared/METRICS.md computed with pandas from the raw purchases, the way an analyst would
(read everything into data frames, group, merge), independently of the project's code.

    .venv/bin/python bench/analytics_pandas.py \
        --dsn postgres://postgres@127.0.0.1:5432/loyalty_bench_analytics \
        --as-of 2026-11-22 --out /tmp/reference.json

It reads customers and purchases from PostgreSQL with COPY … TO STDOUT (CSV, the fastest
way into pandas), then computes, as of the given date and with the analytics settings
stored in the database:
- purchase days (distinct customer × local calendar day with net amount > 0 after refunds);
- per month / quarter / year: active customers, purchase days, net revenue, CRR and churn
  (id-based), RPR, purchase frequency, AOV, annualised monthly churn — all, members,
  non-members (membership at the as-of date);
- over trailing 90 and 365 days: active customers, RPR, frequency, AOV, net revenue,
  inter-purchase time (median, as numpy's percentile);
- second-purchase rate within 30 / 60 / 90 days;
- monthly cohorts by first purchase and by enrollment (bought in month c + k, and in c + k or later);
- historical CLV (mean net revenue to date × margin);
- BG/NBD and Gamma-Gamma fitted by maximum likelihood on per-customer arrays, as the
  `lifetimes` package does (its own log-likelihood and gradient code, written from the
  papers; the optimiser is the project's, BFGS with the analytic gradient from the same
  start), and the mean P(alive) with those parameters.
Amounts are kept in integer cents so that sums are exact, like PostgreSQL's numeric.
"""

# ruff: noqa: S608 - SQL text in this benchmark is built from constants and numbers, never from user input.

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import time

import numpy as np
import pandas as pd
import psycopg
from scipy import optimize, special

TZ = "Europe/Copenhagen"
PERIODS = {"month": 1, "quarter": 3, "year": 12}
PERIODS_BACK = {"month": 24, "quarter": 12, "year": 5}
EPOCH = np.datetime64("1970-01-01", "D")


def read_csv(conn, query: str, names: list[str], dtypes: dict) -> pd.DataFrame:
    buffer = io.BytesIO()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)") as copy:
        for chunk in copy:
            buffer.write(chunk)
    buffer.seek(0)
    return pd.read_csv(buffer, names=names, dtype=dtypes, header=None, engine="c")


def local_days(epoch_seconds: pd.Series) -> np.ndarray:
    """Days since 1970-01-01 of the local calendar date (program time zone) of UTC instants."""
    local = pd.to_datetime(epoch_seconds, unit="s", utc=True).dt.tz_convert(TZ).dt.tz_localize(None)
    return local.to_numpy().astype("datetime64[D]").astype(np.int64)


def month_of_day(days: np.ndarray) -> np.ndarray:
    """Months since year 0 (year × 12 + month − 1) of day numbers."""
    return (days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)) + 1970 * 12


def month_start(number: int) -> str:
    return f"{number // 12:04d}-{number % 12 + 1:02d}-01"


def month_end_day(number: int) -> int:
    return int((np.datetime64(month_start(number + 1), "D") - EPOCH).astype(int)) - 1


def day_iso(number: int) -> str:
    return str(EPOCH + np.timedelta64(int(number), "D"))


def ratio(numerator, denominator):
    if not denominator:
        return None
    return float(numerator) / float(denominator)


# --- Likelihoods (written from Fader, Hardie & Lee 2005, not taken from the project) -----------


def bgnbd_ll(params, x, tx, T):
    """Per customer log-likelihood and its gradient in (r, α, a, b)."""
    r, alpha, a, b = params
    ln_a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    ln_a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    ln_a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_a4 = np.where(
            x > 0,
            np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + tx),
            -np.inf,
        )
        ll = ln_a1 + ln_a2 + np.logaddexp(ln_a3, ln_a4)
        share = np.exp(ln_a4 - np.logaddexp(ln_a3, ln_a4))  # weight of "left after the last purchase"
        d_r = (
            special.digamma(r + x)
            - special.digamma(r)
            + np.log(alpha)
            - (1 - share) * np.log(alpha + T)
            - share * np.log(alpha + tx)
        )
        d_alpha = r / alpha - (1 - share) * (r + x) / (alpha + T) - share * (r + x) / (alpha + tx)
        d_a = special.digamma(a + b) - special.digamma(a + b + x) + share / a
        d_b = (
            special.digamma(b + x)
            - special.digamma(b)
            + special.digamma(a + b)
            - special.digamma(a + b + x)
            - np.where(x > 0, share / (b + np.maximum(x, 1) - 1), 0.0)
        )
    return ll, np.array([d_r.sum(), d_alpha.sum(), d_a.sum(), d_b.sum()])


def gamma_gamma_ll(params, x, m):
    p, q, v = params
    ll = (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(x * m + v)
    )
    d_p = x * (
        special.digamma(p * x + q) - special.digamma(p * x) + np.log(m) + np.log(x) - np.log(x * m + v)
    )
    d_q = special.digamma(p * x + q) - special.digamma(q) + np.log(v) - np.log(x * m + v)
    d_v = q / v - (p * x + q) / (x * m + v)
    return ll, np.array([d_p.sum(), d_q.sum(), d_v.sum()])


def minimise(objective, start):
    """The optimiser of analytics/clv.py: BFGS with the analytic gradient; Nelder–Mead then
    BFGS when that does not converge."""
    quick = optimize.minimize(
        objective, start, jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 500}
    )
    if np.all(np.isfinite(quick.x)) and quick.fun < 1e299 and np.max(np.abs(quick.jac)) < 1e-6:
        return quick
    first = optimize.minimize(
        lambda z: objective(z)[0],
        start,
        method="Nelder-Mead",
        options={"maxiter": 4000, "xatol": 1e-8, "fatol": 1e-12},
    )
    polished = optimize.minimize(
        objective, first.x, jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 500}
    )
    return min((quick, first, polished), key=lambda r: r.fun if np.all(np.isfinite(r.x)) else np.inf)


def fit_bgnbd(x, tx, T) -> dict:
    scale = float(T.mean()) or 1.0
    n = len(x)

    def objective(log_params):
        params = np.exp(log_params)
        ll, gradient = bgnbd_ll(params, x, tx / scale, T / scale)
        value = -ll.sum() / n
        if not np.isfinite(value):
            return 1e300, np.zeros(4)
        return value, -gradient * params / n

    result = minimise(objective, np.log([1.0, 1.0, 1.0, 1.0]))
    r, alpha, a, b = np.exp(result.x)
    alpha *= scale
    ll = float(bgnbd_ll((r, alpha, a, b), x, tx, T)[0].sum())
    return {
        "r": float(r),
        "alpha": float(alpha),
        "a": float(a),
        "b": float(b),
        "log_likelihood": ll,
        "customers": n,
    }


def fit_gamma_gamma(x, m) -> dict:
    scale = float(m.mean())
    n = len(x)

    def objective(log_params):
        params = np.exp(log_params)
        ll, gradient = gamma_gamma_ll(params, x, m / scale)
        value = -ll.sum() / n
        if not np.isfinite(value):
            return 1e300, np.zeros(3)
        return value, -gradient * params / n

    result = minimise(objective, np.log([1.0, 2.0, 1.0]))
    p, q, v = np.exp(result.x)
    v *= scale
    ll = float(gamma_gamma_ll((p, q, v), x, m)[0].sum())
    return {"p": float(p), "q": float(q), "v": float(v), "log_likelihood": ll, "customers": n}


def p_alive(params: dict, x, tx, T):
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        odds = a / (b + np.maximum(x, 1) - 1) * ((alpha + T) / (alpha + tx)) ** (r + x)
        return np.where(x > 0, 1 / (1 + odds), 1.0)


# --- The computation ------------------------------------------------------------------------


def compute(dsn: str, as_of: str) -> tuple[dict, dict]:
    timings: dict = {}
    clock = time.perf_counter()
    a = int((np.datetime64(as_of, "D") - EPOCH).astype(int))
    current = int(month_of_day(np.array([a]))[0])
    with psycopg.connect(dsn) as conn:
        settings = conn.execute("SELECT margin FROM analytics_analyticssettings WHERE id = 1").fetchone()
        margin_bp = int(round(float(settings[0]) * 10000)) if settings else 3000
        customers = read_csv(
            conn,
            "SELECT id, EXTRACT(EPOCH FROM enrolled_at)::bigint FROM accounts_customer",
            ["customer_id", "enrolled_epoch"],
            {"customer_id": np.int64, "enrolled_epoch": "Int64"},
        )
        purchases = read_csv(
            conn,
            "SELECT customer_id, EXTRACT(EPOCH FROM occurred_at)::bigint, amount, refunded_amount"
            " FROM rewards_purchase",
            ["customer_id", "epoch", "amount", "refunded"],
            {"customer_id": np.int64, "epoch": np.int64, "amount": np.float64, "refunded": np.float64},
        )
    clock = _phase(timings, "read_s", clock)

    # Purchase days: net amount in cents, positive; local calendar day; up to the as-of date.
    purchases["net"] = np.rint(purchases["amount"].to_numpy() * 100).astype(np.int64) - np.rint(
        purchases["refunded"].to_numpy() * 100
    ).astype(np.int64)
    purchases = purchases[purchases["net"] > 0]
    purchases["day"] = local_days(purchases["epoch"])
    purchases = purchases[purchases["day"] <= a]
    days = (
        purchases.groupby(["customer_id", "day"], sort=True)
        .agg(net=("net", "sum"), receipts=("net", "size"))
        .reset_index()
    )
    del purchases
    days["month"] = month_of_day(days["day"].to_numpy())
    same = days["customer_id"].to_numpy()[1:] == days["customer_id"].to_numpy()[:-1]
    prev = np.full(len(days), -1, dtype=np.int64)
    prev[1:] = np.where(same, days["day"].to_numpy()[:-1], -1)
    days["prev_day"] = prev
    days["seq"] = days.groupby("customer_id").cumcount() + 1
    enrolled = customers["enrolled_epoch"]
    has = enrolled.notna().to_numpy()
    enrolled_day = np.full(len(customers), np.iinfo(np.int64).max, dtype=np.int64)
    enrolled_day[has] = local_days(enrolled[has].astype(np.int64))
    customers["enrolled_day"] = enrolled_day
    customers["enrolled_month"] = np.where(has, month_of_day(np.where(has, enrolled_day, 0)), -1)
    customers["has_enrolled"] = has
    customers["member"] = has & (enrolled_day <= a)
    member_of = customers.set_index("customer_id")["member"]
    days["member"] = member_of.reindex(days["customer_id"]).to_numpy()
    clock = _phase(timings, "purchase_days_s", clock)

    metrics: dict = {}

    def put(metric, period, start, segment, value):
        metrics[f"{metric}|{period}|{start or ''}|{segment}"] = None if value is None else float(value)

    segments = {"all": None, "members": True, "non_members": False}

    # Per calendar period.
    cm = (
        days.groupby(["customer_id", "month"], sort=False)
        .agg(
            days=("day", "size"), net=("net", "sum"), receipts=("receipts", "sum"), member=("member", "first")
        )
        .reset_index()
    )
    for name, length in PERIODS.items():
        now = current // length
        first = now - PERIODS_BACK[name]
        part = cm[cm["month"] >= (first - 1) * length].copy()
        part["p"] = part["month"] // length
        per = (
            part.groupby(["customer_id", "p"], sort=False)
            .agg(
                days=("days", "sum"),
                net=("net", "sum"),
                receipts=("receipts", "sum"),
                member=("member", "first"),
            )
            .reset_index()
        )
        # Kept: the same customer is active in the next period too.
        keys = per["customer_id"].to_numpy() * 1_000_000 + per["p"].to_numpy()
        per["kept"] = np.isin(keys + 1, keys)
        for index in range(first, now + 1):
            start = month_start(index * length)
            this = per[per["p"] == index]
            before = per[per["p"] == index - 1]
            for segment, flag in segments.items():
                t = this if flag is None else this[this["member"] == flag]
                b = before if flag is None else before[before["member"] == flag]
                active, pdays, net = len(t), int(t["days"].sum()), int(t["net"].sum())
                repeaters = int((t["days"] >= 2).sum())
                base, kept_n = len(b), int(b["kept"].sum())
                crr = ratio(kept_n, base)
                put("active_customers", name, start, segment, active)
                put("purchase_days", name, start, segment, pdays)
                put("net_revenue", name, start, segment, net / 100)
                put("crr", name, start, segment, crr)
                put("churn", name, start, segment, ratio(base - kept_n, base))
                put("rpr", name, start, segment, ratio(repeaters, active))
                put("frequency", name, start, segment, ratio(pdays, active))
                put("aov", name, start, segment, ratio(net / 100, pdays))
                if name == "month":
                    put("churn_annualised", name, start, segment, None if crr is None else 1 - crr**12)
    clock = _phase(timings, "periods_s", clock)

    # Trailing windows.
    for w in (90, 365):
        start = a - w + 1
        inside = days[days["day"] >= start]
        per = inside.groupby("customer_id", sort=False).agg(
            days=("day", "size"), net=("net", "sum"), member=("member", "first")
        )
        gaps_all = inside[inside["prev_day"] >= 0]
        for segment, flag in segments.items():
            t = per if flag is None else per[per["member"] == flag]
            g = gaps_all if flag is None else gaps_all[gaps_all["member"] == flag]
            active, pdays, net = len(t), int(t["days"].sum()), int(t["net"].sum())
            key = f"{segment}:{w}"
            put("active_customers", "window", day_iso(start), key, active)
            put("rpr", "window", day_iso(start), key, ratio(int((t["days"] >= 2).sum()), active))
            put("frequency", "window", day_iso(start), key, ratio(pdays, active))
            put("aov", "window", day_iso(start), key, ratio(net / 100, pdays))
            put("net_revenue", "window", day_iso(start), key, net / 100)
            gap = (g["day"] - g["prev_day"]).to_numpy()
            put(
                "inter_purchase_days",
                "window",
                day_iso(start),
                key,
                np.percentile(gap, 50) if len(gap) else None,
            )
    clock = _phase(timings, "windows_s", clock)

    # Per customer: first, second, last day, purchase days, net, repeat net.
    firsts = days[days["seq"] == 1].set_index("customer_id")
    seconds = days[days["seq"] == 2].set_index("customer_id")["day"]
    per_customer = days.groupby("customer_id", sort=True).agg(
        n=("day", "size"), last=("day", "max"), net=("net", "sum"), last_month=("month", "max")
    )
    per_customer["first"] = firsts["day"]
    per_customer["first_month"] = firsts["month"]
    per_customer["first_net"] = firsts["net"]
    per_customer["second"] = seconds.reindex(per_customer.index)
    for d in (30, 60, 90):
        base = per_customer["first"] <= a - d
        repeated = base & (per_customer["second"] <= per_customer["first"] + d)
        put("second_purchase_rate", "asof", None, str(d), ratio(int(repeated.sum()), int(base.sum())))
    hist_cents = (per_customer["net"].to_numpy() * margin_bp + 5000) // 10000
    put("historical_clv", "asof", None, "all", hist_cents.mean() / 100 if len(hist_cents) else None)
    clock = _phase(timings, "customers_s", clock)

    # Cohorts.
    cohorts: dict = {}
    first_cohort = current - 24 + 1
    complete_through = current if month_end_day(current) <= a else current - 1  # noqa: F841 - as the project
    pc = per_customer[per_customer["first_month"] >= first_cohort]
    sizes = pc.groupby("first_month").size()
    active = (
        cm.merge(pc[["first_month"]], left_on="customer_id", right_index=True)
        .assign(k=lambda f: f["month"] - f["first_month"])
        .groupby(["first_month", "k"])
        .size()
    )
    later = pc.assign(k=pc["last_month"] - pc["first_month"]).groupby(["first_month", "k"]).size()
    _cohort_cells(cohorts, "first_purchase", sizes, active, later, current)
    enrolled_customers = customers[
        customers["has_enrolled"]
        & (customers["enrolled_month"] >= first_cohort)
        & (customers["enrolled_day"] <= a)
    ].set_index("customer_id")
    sizes = enrolled_customers.groupby("enrolled_month").size()
    joined = cm.merge(enrolled_customers[["enrolled_month"]], left_on="customer_id", right_index=True)
    joined = joined[joined["month"] >= joined["enrolled_month"]]
    active = (
        joined.assign(k=joined["month"] - joined["enrolled_month"]).groupby(["enrolled_month", "k"]).size()
    )
    last = per_customer[["last_month"]].join(enrolled_customers[["enrolled_month"]], how="inner")
    last = last[last["last_month"] >= last["enrolled_month"]]
    later = last.assign(k=last["last_month"] - last["enrolled_month"]).groupby(["enrolled_month", "k"]).size()
    _cohort_cells(cohorts, "enrollment", sizes, active, later, current)
    clock = _phase(timings, "cohorts_s", clock)

    # Model fits on per-customer arrays (days).
    x = (per_customer["n"] - 1).to_numpy(dtype=float)
    tx = (per_customer["last"] - per_customer["first"]).to_numpy(dtype=float)
    T = (a - per_customer["first"]).to_numpy(dtype=float)
    bg = fit_bgnbd(x, tx, T)
    repeat_cents = (per_customer["net"] - per_customer["first_net"]).to_numpy()
    x_int = (per_customer["n"] - 1).to_numpy(dtype=np.int64)
    keep = (x > 0) & (repeat_cents > 0)
    gg = fit_gamma_gamma(x[keep], repeat_cents[keep] / 100 / x[keep])
    alive = p_alive(bg, x, tx, T)
    timings["fits_s"] = round(time.perf_counter() - clock, 3)
    clock = _phase(timings, "fits_and_p_alive_s", clock)

    figures = {
        "metrics": metrics,
        "cohorts": cohorts,
        "fits": {"bgnbd": bg, "gamma_gamma": gg},
        "scores": {
            "shoppers": len(per_customer),
            "historical_clv_mean": hist_cents.mean() / 100,
            "net_revenue_mean": per_customer["net"].mean() / 100,
            "p_alive_mean": float(alive.mean()),
        },
        # What the CLV models are fitted on (METRICS.md "Model-based CLV"), summed over the
        # shoppers: frequency = repeat purchase days, recency = t_x, age = T (days), and the
        # mean net amount of the repeat days, in cents rounded half away from zero as the
        # project stores it.
        "clv_inputs": {
            "shoppers": int(len(x)),
            "frequency_sum": int(x.sum()),
            "recency_sum": int(tx.sum()),
            "age_sum": int(T.sum()),
            "repeat_customers": int((x > 0).sum()),
            "gamma_gamma_customers": int(keep.sum()),
            "repeat_mean_spend_cents_sum": int(
                ((2 * repeat_cents[x > 0] + x_int[x > 0]) // (2 * x_int[x > 0])).sum()
            ),
        },
    }
    return figures, timings


def _cohort_cells(out: dict, kind: str, sizes, active, later, current: int) -> None:
    later_by = {}
    for (c, k), n in later.items():
        later_by.setdefault(int(c), []).append((int(k), int(n)))
    active_by = {(int(c), int(k)): int(n) for (c, k), n in active.items()}
    for cohort, size in sizes.items():
        cohort = int(cohort)
        for k in range(0, current - cohort + 1):
            rest = sum(n for j, n in later_by.get(cohort, []) if j >= k)
            out[f"{kind}|{month_start(cohort)}|{k}"] = [int(size), active_by.get((cohort, k), 0), rest]


def _phase(timings: dict, name: str, started: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - started, 3)
    return now


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    figures, timings = compute(args.dsn, args.as_of)
    result = {
        "mode": "pandas",
        "pandas": pd.__version__,
        "wall_s": round(time.perf_counter() - started, 3),
        "timings": timings,
        "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "figures": figures,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
