"""Writes of the analytics app: computation runs (full refresh and incremental update),
survey answers, and the signed survey links.

`analytics_refresh` is what the nightly job, `compute_analytics` and the tests call; it
writes one AnalyticsRun with everything the dashboards show. `analytics_update` is the
cheap daytime job: the rollup and the scores of customers who bought since.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

import datetime as dt
import logging
import time

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer

from . import compute, effect, metrics, rollup, sql
from .models import (
    AnalyticsRun,
    CohortCell,
    MetricValue,
    MonthlyCost,
    ProgramEffect,
    RollupState,
    Survey,
    SurveyResponse,
)

logger = logging.getLogger(__name__)

# Two runs at once would fight over the temporary tables' inputs; PostgreSQL serialises
# them with a transaction-level advisory lock (SQLite's writer lock does it on the demo).
ADVISORY_LOCK = 0x414E4C59  # "ANLY"


class AnalyticsError(Exception):
    pass


def _lock() -> bool:
    if not sql.is_postgres():
        return True
    return bool(sql.fetchone("SELECT pg_try_advisory_xact_lock(%s)", [ADVISORY_LOCK])[0])


def analytics_refresh(*, as_of: dt.date | None = None, rebuild: bool = False, **overrides) -> AnalyticsRun:
    """A full computation as of `as_of` (default: today in the program's time zone).

    Guarantee: either a run with status "done" and all its snapshot rows, or a run marked
    "failed" with the error and no snapshot rows. Parameters of the computation (margin,
    churn days, windows …) come from AnalyticsSettings unless given as keyword arguments,
    and are stored on the run.
    """
    as_of = as_of or timezone.localdate()
    parameters = compute.Parameters.from_settings(as_of=as_of, **overrides)
    run = AnalyticsRun.objects.create(
        kind=AnalyticsRun.Kind.FULL, as_of=as_of, parameters=parameters.as_json()
    )
    timings: dict = {}
    try:
        with transaction.atomic():
            if not _lock():
                raise AnalyticsError("Another analytics run is in progress.")
            sql.tune_for_analytics()
            _refresh(run, parameters, rebuild=rebuild, timings=timings)
    except Exception as exc:
        logger.exception("analytics run %s failed", run.pk)
        AnalyticsRun.objects.filter(pk=run.pk).update(
            status=AnalyticsRun.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            timings=timings,
            finished_at=timezone.now(),
        )
        raise
    run.refresh_from_db()
    return run


def _phase(timings: dict, name: str, started: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - started, 3)
    return now


def _refresh(run: AnalyticsRun, p: compute.Parameters, *, rebuild: bool, timings: dict) -> None:
    clock = time.perf_counter()
    state = RollupState.objects.filter(pk=1).first()
    rolled = rollup.rollup_rebuild() if rebuild or state is None else rollup.rollup_update()
    clock = _phase(timings, "rollup", clock)
    counts = compute.work_tables_build(p)
    clock = _phase(timings, "work_tables", clock)
    inputs = compute.fits_inputs(p)

    def models():  # Python alone: no database
        fits = compute.fits_from_inputs(*inputs)
        return fits, compute.predictions_arrays(p, fits)

    # The model fits and predictions (numpy, scipy) while PostgreSQL sums the monthly activity.
    activity, (fits, predicted) = metrics.monthly_activity(p, meanwhile=models)
    compute.fits_save(run, fits)
    clock = _phase(timings, "fits_and_activity", clock)
    model = compute.predictions_table_build(p, fits, arrays=predicted)
    clock = _phase(timings, "predictions", clock)
    scored = compute.scores_insert(run, p, fits, model=model)
    clock = _phase(timings, "scores", clock)
    rows = metrics.period_series(p, activity)
    rows += metrics.window_metrics(p)
    rows += metrics.second_purchase_rates(p)
    clock = _phase(timings, "retention", clock)
    cells = metrics.cohorts(p, activity=activity)
    clock = _phase(timings, "cohorts", clock)
    rows += metrics.points_metrics(p)
    rows += metrics.acquisition_metrics(p, run.pk)
    rows += metrics.satisfaction_metrics(p)
    rows += metrics.clv_metrics(p, run.pk, rows)
    clock = _phase(timings, "money", clock)
    result = effect.program_effect(p)
    effects = result.rows + naive_gap_rows(rows)
    rows += program_value_rows(p, result.rows, activity, rows)
    clock = _phase(timings, "effect", clock)
    MetricValue.objects.bulk_create(MetricValue(run=run, **row) for row in rows)
    CohortCell.objects.bulk_create(CohortCell(run=run, **cell) for cell in cells)
    ProgramEffect.objects.bulk_create(ProgramEffect(run=run, **row) for row in effects)
    _phase(timings, "write", clock)
    timings.update(
        {
            "shoppers": counts["shoppers"],
            "scored": scored,
            "rollup_purchase_days": rolled["purchase_days"],
            "rollup_customers_touched": rolled["customers_touched"],
            "churn_rule": "p_alive" if model else "tau",
        }
    )
    parameters = dict(run.parameters, churn_rule="p_alive<0.5 (tau for one-time buyers)" if model else "tau")
    AnalyticsRun.objects.filter(pk=run.pk).update(
        status=AnalyticsRun.Status.DONE, timings=timings, parameters=parameters, finished_at=timezone.now()
    )
    # In the same transaction: a failed run keeps the previous runs' scores.
    compute.scores_prune(keep_runs=settings.ANALYTICS_SCORE_RUNS_KEPT)


def naive_gap_rows(rows: list[dict]) -> list[dict]:
    """Members vs non-members, as they look (biased: heavy buyers join more): RPR and spend per
    active customer per month over the trailing year, CRR of the last complete month."""
    index = {(r["metric"], r["period"], r["segment"], r["period_start"]): r for r in rows}
    out = []

    def add(outcome, members, non_members, **extra):
        estimate = None if members is None or non_members is None else members - non_members
        out.append(
            {
                "method": "naive",
                "outcome": outcome,
                "cohort": None,
                "segment": "all",
                "estimate": estimate,
                "ci_low": None,
                "ci_high": None,
                "extra": {"members": members, "non_members": non_members, "biased": True, **extra},
            }
        )

    rpr = {s: r["value"] for (m, _p, s, _d), r in index.items() if m == "rpr" and _p == "window"}
    add("rpr", rpr.get("members:365"), rpr.get("non_members:365"), window_days=365)
    revenue = {s: r["value"] for (m, _p, s, _d), r in index.items() if m == "net_revenue" and _p == "window"}
    active = {
        s: r["value"] for (m, _p, s, _d), r in index.items() if m == "active_customers" and _p == "window"
    }

    def per_month(segment):
        a, v = active.get(segment), revenue.get(segment)
        return None if not a or v is None else v / a / 12

    add("spend", per_month("members:365"), per_month("non_members:365"), window_days=365)
    months = sorted(
        {r["period_start"] for r in rows if r["metric"] == "crr" and r["period"] == "month" and r["complete"]}
    )
    if months:
        last = months[-1]
        crr_m = index.get(("crr", "month", "members", last))
        crr_n = index.get(("crr", "month", "non_members", last))
        add(
            "crr",
            crr_m and crr_m["value"],
            crr_n and crr_n["value"],
            month=last.isoformat(),
        )
    return out


def program_value_rows(
    p: compute.Parameters, effect_rows: list[dict], activity: list[tuple], metric_rows: list[dict]
) -> list[dict]:
    """Incremental purchase days and revenue over the trailing 12 months, and the program's
    ROI = (incremental margin − cost of rewards redeemed − program costs) ÷ program costs.

    METRICS.md defines the program's incremental repeat purchases (and revenue) per member per
    month: the pooled difference in differences, which is measured on members who were buying
    when they joined, over the months after their enrollment month. The totals apply it to the
    member-months it speaks for: each member's months after the month they joined, up to the
    month of their last purchase day, in the last 12 months. Not to every month of every
    member: the months after a member stopped buying (lapsed members) would each add the
    average effect of an active member, and the total would overstate what the program added
    (on the demo's simulated shoppers by more than half). The 95 % interval of the totals is
    the estimate's interval times the same member-months."""
    pooled = {
        r["outcome"]: r
        for r in effect_rows
        if r["method"] == "did" and r["cohort"] is None and r["segment"] == "all"
    }
    first = p.as_of_month - 11
    # From the monthly activity: members (at the as-of date) by enrollment month and the month
    # of their last purchase day (column 10 counts the customers whose last month it is).
    member_months = 0
    for month, member, _first_month, enrolled_month, *counts in activity:
        last_here = counts[6]
        if member and enrolled_month is not None and last_here:
            start, end = max(enrolled_month + 1, first), min(month, p.as_of_month)
            member_months += last_here * max(0, end - start + 1)
    start = sql.month_start(first)
    # Points redeemed, net of returned vouchers, in those months: the numerators of the monthly
    # redemption rates (metrics.points_metrics), not another pass over the ledger.
    redeemed = sum(
        r["numerator"]
        for r in metric_rows
        if r["metric"] == "redemption_rate" and r["period"] == "month" and r["period_start"] >= start
    )
    rewards_cost = float(redeemed or 0) * p.point_cost
    costs = [
        float(a)
        for a in MonthlyCost.objects.filter(
            kind=MonthlyCost.Kind.PROGRAM, month__gte=start, month__lte=p.as_of
        ).values_list("amount", flat=True)
    ]
    program_costs = sum(costs) if costs else None
    days_effect, spend_effect = pooled.get("purchase_days", {}), pooled.get("spend", {})
    days, spend = days_effect.get("estimate"), spend_effect.get("estimate")
    revenue = None if spend is None else spend * member_months

    def total(effect: dict, bound: str):
        value = effect.get(bound)
        return None if value is None else value * member_months

    margin = None if revenue is None else revenue * p.margin
    roi = None
    if margin is not None and program_costs:
        roi = (margin - rewards_cost - program_costs) / program_costs
    common = {
        "period": "window",
        "period_start": start,
        "period_end": p.as_of,
        "segment": "all",
        "complete": True,
    }
    return [
        {
            "metric": "incremental_purchase_days",
            "value": None if days is None else days * member_months,
            "numerator": None,
            "denominator": None,
            **common,
            "extra": {
                "per_member_month": days,
                "member_months": member_months,
                "ci_low": total(days_effect, "ci_low"),
                "ci_high": total(days_effect, "ci_high"),
            },
        },
        {
            "metric": "incremental_revenue",
            "value": revenue,
            "numerator": None,
            "denominator": None,
            **common,
            "extra": {
                "per_member_month": spend,
                "member_months": member_months,
                "ci_low": total(spend_effect, "ci_low"),
                "ci_high": total(spend_effect, "ci_high"),
                "currency": p.currency,
            },
        },
        {
            "metric": "program_roi",
            "value": roi,
            "numerator": None if margin is None else margin - rewards_cost - (program_costs or 0),
            "denominator": program_costs,
            **common,
            "extra": {
                "incremental_margin": margin,
                "rewards_cost": rewards_cost,
                "program_costs": program_costs,
                "margin": p.margin,
                "point_cost": p.point_cost,
                "points_redeemed": float(redeemed or 0),
            },
        },
    ]


@transaction.atomic
def analytics_update() -> dict:
    """The incremental update: bring the rollup up to date and refresh, in the latest full
    run, the scores of customers who bought (or were refunded) since, with that run's model
    parameters. Idempotent: a second run finds nothing new (and records nothing). Metrics,
    cohorts and the program effect wait for the next full refresh.

    An update that found something new is recorded as a run of kind "incremental" with its
    as-of date (today), the parameters its scores were computed with and the full run whose
    scores it refreshed (`base_run`); it has no snapshot rows of its own, the refreshed scores
    say so in `CustomerScore.updated_at`."""
    started = time.perf_counter()
    if not _lock():
        return {"skipped": "another analytics run is in progress"}
    sql.tune_for_analytics()
    state = RollupState.objects.filter(pk=1).first()
    before = (state.purchase_id, state.refund_id) if state and state.rebuilt_at else None
    rolled = rollup.rollup_update()
    latest = AnalyticsRun.objects.filter(kind=AnalyticsRun.Kind.FULL, status=AnalyticsRun.Status.DONE).first()
    refreshed = 0
    p = compute.Parameters.from_settings(as_of=timezone.localdate())
    if latest is not None and before is not None and rolled["customers_touched"]:
        # The customers the rollup update re-aggregated (analytics_touched: purchases or refunds
        # since the last update, and those committed late below its watermark), without reading
        # them again.
        with sql.planner(random_page_cost=sql.CACHED):
            refreshed = scores_refresh(latest, customers_table="analytics_touched", parameters=p)
    answer = {
        "purchase_days": rolled["purchase_days"],
        "customers_touched": rolled["customers_touched"],
        "scores_refreshed": refreshed,
        "id_ranges_not_seen": rolled.get("id_ranges_not_seen"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if rolled["customers_touched"] or refreshed:
        record = AnalyticsRun.objects.create(
            kind=AnalyticsRun.Kind.INCREMENTAL,
            as_of=p.as_of,
            status=AnalyticsRun.Status.DONE,
            parameters={
                **p.as_json(),
                "base_run": latest.pk if latest else None,
                # The base run's models, hence its rule (services.scores_refresh, compute.risk_sql).
                "churn_rule": latest.parameters.get("churn_rule") if latest else None,
            },
            timings=answer,
            finished_at=timezone.now(),
        )
        answer["run"] = record.pk
    return answer


def scores_refresh(
    run: AnalyticsRun,
    *,
    customer_ids: list[int] | None = None,
    customers_table: str | None = None,
    parameters: compute.Parameters | None = None,
) -> int:
    """Recompute the scores of these customers (given as ids, or as a table with a
    customer_id column) as of today, with the run's fitted models and its RFM boundaries kept
    (their R, F and M stay as the full run ranked them). The amounts and the churn risk come
    from the same SQL as the full refresh's, the predictions from the same functions: a
    customer refreshed today scores as a full refresh today would score them."""
    import numpy as np

    from .models import ModelFit

    p = parameters or compute.Parameters.from_settings(as_of=timezone.localdate())
    a = p.as_of_number
    fits = {f.model: f.parameters for f in ModelFit.objects.filter(run=run, converged=True)}
    bg = fits.get(ModelFit.Model.BGNBD)
    if customers_table is None:
        customers_table = "analytics_refresh"
        sql.temp_table(customers_table, "customer_id bigint PRIMARY KEY")
        sql.rows_insert(customers_table, ["customer_id"], [(c,) for c in sorted(set(customer_ids or []))])
        if sql.is_postgres():
            sql.execute(f"ANALYZE {customers_table}", [])  # its size, for a plan that probes per customer
    money = sql.money_type()
    sql.temp_table(
        "analytics_rescore",
        f"customer_id bigint PRIMARY KEY, n integer, first_day integer, last_day integer, net {money}, "
        f"repeat_net {money}, is_member integer",
    )
    sql.execute(
        f"""
        INSERT INTO analytics_rescore (customer_id, n, first_day, last_day, net, repeat_net, is_member)
        -- Membership probed per customer after grouping (joined to every day, the planner read all
        -- million customers).
        SELECT s.*, (SELECT CASE WHEN c.enrolled_at IS NULL THEN 0 ELSE 1 END FROM accounts_customer c
                     WHERE c.id = s.customer_id)
        FROM (SELECT d.customer_id, COUNT(*) AS n, MIN(d.day_number) AS first_day,
                     MAX(d.day_number) AS last_day, SUM(d.net_amount) AS net,
                     COALESCE(SUM(CASE WHEN d.seq > 1 THEN d.net_amount END), 0) AS repeat_net
              FROM analytics_customerday d JOIN {customers_table} r ON r.customer_id = d.customer_id
              WHERE d.day_number <= %s GROUP BY d.customer_id) s
        """,
        [a],
    )
    rows = sql.fetchall("SELECT customer_id, n, first_day, last_day FROM analytics_rescore", [])
    if not rows:
        return 0
    sql.temp_table(
        "analytics_repred",
        "customer_id bigint PRIMARY KEY, p_alive double precision, e30 double precision, "
        "e90 double precision, e365 double precision, dep double precision",
    )
    if bg:
        data = np.array(rows, dtype=float)
        n, first, last = data[:, 1], data[:, 2], data[:, 3]
        sql.arrays_insert(
            "analytics_repred",
            {
                "customer_id": data[:, 0].astype(np.int64),
                **compute.predictions(p, bg, n - 1, last - first, a - first),
            },
        )
    margin = p.margin
    columns = [
        "is_member",
        "first_day",
        "last_day",
        "purchase_days",
        "frequency",
        "recency",
        "age",
        "net_revenue",
        "repeat_mean_spend",
        "historical_clv",
        "p_alive",
        "expected_30",
        "expected_90",
        "expected_365",
        "expected_spend",
        "predicted_clv",
        "churn_risk",
        "updated_at",
    ]
    spend = compute.spend_sql(fits.get(ModelFit.Model.GAMMA_GAMMA) if bg else None)
    # One INSERT … ON CONFLICT DO UPDATE in customer order: Django's bulk_update writes a CASE
    # per field and row, which PostgreSQL evaluates row × batch times (seconds for thousands).
    # New scores (a first purchase since the run) start with the lowest RFM scores; existing
    # ones keep the RFM scores the full run gave them.
    refreshed = sql.execute(
        f"""
        INSERT INTO analytics_customerscore
            (run_id, customer_id, {", ".join(columns)}, rfm_r, rfm_f, rfm_m, rfm_score)
        SELECT %s, customer_id, is_member = 1, {sql.date_sql("first_day")}, {sql.date_sql("last_day")}, n,
               n - 1, last_day - first_day, {a} - first_day, net, rms, hist, p_alive, e30, e90, e365,
               {sql.money_sql("spend")}, {sql.money_sql(f"dep * spend * {margin}")}, risk, %s, 1, 1, 1, 3
        FROM (
            SELECT cs.customer_id, cs.is_member, cs.first_day, cs.last_day, cs.n, cs.net,
                   CASE WHEN cs.n > 1 THEN {sql.money_sql("cs.repeat_net / (cs.n - 1)")} END AS rms,
                   {sql.money_sql(f"cs.net * {margin}")} AS hist,
                   pr.p_alive, pr.e30, pr.e90, pr.e365, pr.dep, {spend} AS spend,
                   {compute.risk_sql(p, model=bool(bg))} AS risk
            FROM analytics_rescore cs LEFT JOIN analytics_repred pr ON pr.customer_id = cs.customer_id
        ) s
        WHERE 1 = 1  -- SQLite would read the ON below as a join's
        ORDER BY customer_id
        ON CONFLICT (run_id, customer_id) DO UPDATE
        SET {", ".join(f"{c} = excluded.{c}" for c in columns)}
        """,
        [run.pk, sql.timestamp_param(timezone.now())],
    )
    sql.execute("DROP TABLE analytics_rescore", [])
    sql.execute("DROP TABLE analytics_repred", [])
    return refreshed


# --- Surveys -------------------------------------------------------------------------------------

SURVEY_SALT = "analytics.survey"


class SurveyError(Exception):
    pass


def survey_token_make(*, survey: Survey, customer: Customer) -> str:
    """A signed token for a survey link in a message: it names the survey and the member it
    was sent to, so the link works only for that member (when signed in)."""
    return signing.dumps({"s": survey.pk, "c": customer.pk}, salt=SURVEY_SALT, compress=True)


def survey_token_read(token: str, *, max_age_days: int = 90) -> tuple[int, int | None]:
    """(survey id, customer id or None) from a token; raises SurveyError when forged or expired."""
    try:
        data = signing.loads(token, salt=SURVEY_SALT, max_age=dt.timedelta(days=max_age_days))
    except signing.SignatureExpired as exc:
        raise SurveyError(_("This survey link has expired.")) from exc
    except signing.BadSignature as exc:
        raise SurveyError(_("This survey link is not valid.")) from exc
    return int(data["s"]), data.get("c")


def survey_portal_token(*, survey: Survey) -> str:
    """A token for the portal's own link to a survey: any signed-in member may answer it."""
    return signing.dumps({"s": survey.pk}, salt=SURVEY_SALT, compress=True)


@transaction.atomic
def survey_answer(*, survey: Survey, customer: Customer, score: int, comment: str = "") -> SurveyResponse:
    """Record a member's answer. One answer per member and survey: a second answer is refused
    (SurveyError), also when two arrive at once (the unique constraint decides)."""
    if not survey.is_active:
        raise SurveyError(_("This survey is closed."))
    if score not in survey.scale:
        raise SurveyError(_("Choose a score on the scale."))
    try:
        with transaction.atomic():
            return SurveyResponse.objects.create(
                survey=survey,
                customer=customer,
                score=score,
                comment=comment.strip()[:2000],
                answered_at=timezone.now(),
            )
    except IntegrityError as exc:
        raise SurveyError(_("You have already answered this survey. Thank you!")) from exc
