"""Reads of the analytics snapshots: what dashboards, the report, campaigns and the member's
data download use. Never computes metrics; only reads what a run wrote."""

from __future__ import annotations

from django.db.models import F, Q, QuerySet

from accounts.models import Customer

from .models import AnalyticsRun, CohortCell, CustomerScore, MetricValue, ModelFit, ProgramEffect, Survey


def run_latest(*, kind: str | None = AnalyticsRun.Kind.FULL) -> AnalyticsRun | None:
    """The newest finished run (of a kind: full refreshes by default)."""
    runs = AnalyticsRun.objects.filter(status=AnalyticsRun.Status.DONE)
    if kind:
        runs = runs.filter(kind=kind)
    return runs.order_by("-id").first()


def run_last_attempt(*, kind: str | None = AnalyticsRun.Kind.FULL) -> AnalyticsRun | None:
    """The newest run whatever its status (running, failed or done): the staff pages say so
    when the latest attempt failed or is still running."""
    runs = AnalyticsRun.objects.all()
    if kind:
        runs = runs.filter(kind=kind)
    return runs.order_by("-id").first()


def metrics_index(run: AnalyticsRun) -> dict[tuple[str, str, str], list[MetricValue]]:
    """Every metric value of a run in one query, by (metric, period, segment), each list in
    period order: what a dashboard page reads instead of a query per number."""
    index: dict[tuple[str, str, str], list[MetricValue]] = {}
    for m in MetricValue.objects.filter(run=run).order_by("metric", "period", "segment", "period_start"):
        index.setdefault((m.metric, m.period, m.segment), []).append(m)
    return index


def surveys_by_id(ids) -> dict[int, Survey]:
    return Survey.objects.in_bulk([int(i) for i in ids if str(i).isdigit()])


SCORE_ORDERS = ("predicted_clv", "historical_clv", "p_alive", "expected_90", "rfm_score", "last_day")


def scores_search(
    run: AnalyticsRun, *, query: str = "", risk: str | None = None, order: str = "-predicted_clv"
) -> QuerySet[CustomerScore]:
    """The run's per-customer scores, filtered by a customer number, name or email fragment
    and a churn-risk label, sorted by one of SCORE_ORDERS (descending with a leading "-";
    empty values last, then by customer id so pages are stable)."""
    scores = CustomerScore.objects.filter(run=run).select_related("customer")
    query = query.strip()
    if query:
        words = Q()
        for word in query.split()[:4]:
            words &= (
                Q(customer__external_ref__icontains=word)
                | Q(customer__first_name__icontains=word)
                | Q(customer__last_name__icontains=word)
                | Q(customer__email__icontains=word)
            )
        scores = scores.filter(words)
    if risk in CustomerScore.Risk.values:
        scores = scores.filter(churn_risk=risk)
    if order.lstrip("-") not in SCORE_ORDERS:
        order = "-predicted_clv"
    column = F(order.lstrip("-"))
    return scores.order_by(
        column.desc(nulls_last=True) if order.startswith("-") else column.asc(nulls_last=True), "customer_id"
    )


def customer_scores_latest() -> QuerySet[CustomerScore] | None:
    """Per-customer scores of the latest full run (None before the first run). Join on
    `customer_id`; filter on p_alive, predicted_clv, rfm_score, churn_risk."""
    run = run_latest()
    if run is None:
        return None
    return CustomerScore.objects.filter(run=run)


def metric_values(run: AnalyticsRun, metric: str, *, period: str, segment: str = "all") -> list[MetricValue]:
    return list(
        MetricValue.objects.filter(run=run, metric=metric, period=period, segment=segment).order_by(
            "period_start"
        )
    )


def metric_value(run: AnalyticsRun, metric: str, *, period: str = "asof", segment: str = "all"):
    return MetricValue.objects.filter(run=run, metric=metric, period=period, segment=segment).first()


def cohort_table(run: AnalyticsRun, *, kind: str) -> list[dict]:
    """Rows per cohort (newest first) with their cells in period order."""
    rows: dict = {}
    for cell in CohortCell.objects.filter(run=run, kind=kind).order_by("-cohort", "period"):
        row = rows.setdefault(cell.cohort, {"cohort": cell.cohort, "size": cell.size, "cells": []})
        row["cells"].append(cell)
    return list(rows.values())


def fits_of(run: AnalyticsRun) -> dict[str, ModelFit]:
    return {fit.model: fit for fit in ModelFit.objects.filter(run=run)}


def effects_of(run: AnalyticsRun) -> list[ProgramEffect]:
    return list(ProgramEffect.objects.filter(run=run).order_by("method", "outcome", "cohort", "segment"))


def top_customers(run: AnalyticsRun, *, limit: int = 20) -> list[CustomerScore]:
    order = "-predicted_clv" if run.scores.filter(predicted_clv__isnull=False).exists() else "-historical_clv"
    return list(
        CustomerScore.objects.filter(run=run)
        .exclude(**{f"{order[1:]}__isnull": True})
        .select_related("customer")
        .order_by(order, "customer_id")[:limit]
    )


def report(run: AnalyticsRun) -> dict:
    """The latest snapshot as plain data (`analytics_report --json`)."""

    def values(metric, period, segment="all"):
        return [
            {
                "start": m.period_start.isoformat() if m.period_start else None,
                "end": m.period_end.isoformat() if m.period_end else None,
                "value": m.value,
                "numerator": m.numerator,
                "denominator": m.denominator,
                "complete": m.complete,
            }
            for m in metric_values(run, metric, period=period, segment=segment)
        ]

    def one(metric, period="asof", segment="all"):
        m = metric_value(run, metric, period=period, segment=segment)
        return None if m is None else {"value": m.value, **({"extra": m.extra} if m.extra else {})}

    def described(r: AnalyticsRun | None) -> dict | None:
        if r is None:
            return None
        return {
            "id": r.pk,
            "kind": r.kind,
            "as_of": r.as_of.isoformat(),
            "parameters": r.parameters,
            "timings": r.timings,
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        }

    surveys = {s.pk: s for s in Survey.objects.all()}
    return {
        "run": described(run),
        # The latest incremental update since: the scores of the customers it touched are as
        # of its date (their rows' updated_at), everything else as of the run's.
        "incremental_update": described(
            AnalyticsRun.objects.filter(
                kind=AnalyticsRun.Kind.INCREMENTAL, status=AnalyticsRun.Status.DONE, pk__gt=run.pk
            )
            .order_by("-pk")
            .first()
        ),
        "crr": {period: values("crr", period) for period in ("month", "quarter", "year")},
        "churn": {period: values("churn", period) for period in ("month", "quarter", "year")},
        "churn_annualised": values("churn_annualised", "month"),
        "rpr": {
            "month": values("rpr", "month"),
            **{f"window_{d}": one("rpr", "window", f"all:{d}") for d in run.parameters.get("windows", [])},
        },
        "second_purchase_rate": {d: one("second_purchase_rate", "asof", d) for d in ("30", "60", "90")},
        "frequency": {
            f"window_{d}": one("frequency", "window", f"all:{d}") for d in run.parameters.get("windows", [])
        },
        "aov": {f"window_{d}": one("aov", "window", f"all:{d}") for d in run.parameters.get("windows", [])},
        "inter_purchase_days": {
            f"window_{d}": one("inter_purchase_days", "window", f"all:{d}")
            for d in run.parameters.get("windows", [])
        },
        "cohorts": {
            kind: [
                {
                    "cohort": row["cohort"].isoformat(),
                    "size": row["size"],
                    "retention": [c.retention for c in row["cells"]],
                    "rolling_retention": [c.rolling_retention for c in row["cells"]],
                    "complete": [c.complete for c in row["cells"]],
                }
                for row in cohort_table(run, kind=kind)
            ]
            for kind in CohortCell.Kind.values
        },
        "clv": {
            "historical": one("historical_clv"),
            "simple": one("simple_clv"),
            "predicted": one("predicted_clv"),
            "models": {
                name: {
                    "parameters": fit.parameters,
                    "log_likelihood": fit.log_likelihood,
                    "customers": fit.customers,
                    "converged": fit.converged,
                    "time_unit": fit.time_unit,
                }
                for name, fit in fits_of(run).items()
            },
        },
        "nps": {
            "all": one("nps"),
            "surveys": {
                surveys[int(m.segment)].name if int(m.segment) in surveys else m.segment: m.value
                for m in MetricValue.objects.filter(run=run, metric="nps", period="asof").exclude(
                    segment="all"
                )
            },
            "month": values("nps", "month"),
        },
        "csat": {"all": one("csat"), "month": values("csat", "month")},
        "points": {
            "outstanding": one("points_outstanding"),
            "liability": one("points_liability"),
            "breakage": one("points_breakage"),
            "redemption_rate": values("redemption_rate", "month"),
        },
        "cac": {
            "month": values("cac", "month"),
            "trailing_12_months": one("cac", "window"),
            "clv_cac": one("clv_cac", "window"),
        },
        "program_effect": [
            {
                "method": e.method,
                "outcome": e.outcome,
                "cohort": e.cohort.isoformat() if e.cohort else None,
                "segment": e.segment,
                "estimate": e.estimate,
                "ci95": [e.ci_low, e.ci_high],
                "treated": e.treated,
                "controls": e.controls,
                "biased": e.method == ProgramEffect.Method.NAIVE,
                "extra": e.extra,
            }
            for e in effects_of(run)
        ],
        "program_value": {
            name: one(name, "window")
            for name in ("incremental_purchase_days", "incremental_revenue", "program_roi")
        },
    }


def customer_export(customer: Customer) -> dict:
    """What analytics holds about a member, for their data download: survey answers and the
    latest scores."""
    scores = customer_scores_latest()
    score = scores.filter(customer=customer).first() if scores is not None else None
    return {
        "survey_answers": [
            {
                "survey": r.survey.name,
                "score": r.score,
                "comment": r.comment,
                "answered_at": r.answered_at.isoformat(),
            }
            for r in customer.survey_responses.select_related("survey").order_by("answered_at")
        ],
        "analytics_scores": None
        if score is None
        else {
            "as_of": score.run.as_of.isoformat(),
            "p_alive": score.p_alive,
            "expected_purchase_days_90": score.expected_90,
            "predicted_clv": str(score.predicted_clv) if score.predicted_clv is not None else None,
            "rfm": score.rfm_code,
            "churn_risk": score.churn_risk,
        },
    }


def surveys_open_for(customer: Customer) -> list[dict]:
    """Open surveys the member has not answered yet, each with its question in the member's
    language and a link to answer it (signed for that member)."""
    from django.urls import reverse

    from .services import survey_token_make

    surveys = (
        Survey.objects.filter(is_active=True).exclude(responses__customer=customer).order_by("-created_at")
    )
    return [
        {
            "survey": survey,
            "question": survey.question_in(customer.language),
            "url": reverse("survey-answer", args=[survey_token_make(survey=survey, customer=customer)]),
        }
        for survey in surveys
    ]


# --- The staff panel --------------------------------------------------------------------------


def customer_score_latest(*, customer_id: int) -> tuple[AnalyticsRun | None, CustomerScore | None]:
    """The latest full run and this customer's scores in it (None, None before the first run;
    (run, None) when the run did not score them: no purchase yet)."""
    run = run_latest()
    if run is None:
        return None, None
    return run, CustomerScore.objects.filter(run=run, customer_id=customer_id).first()


def survey_answers_of(*, customer_id: int) -> list:
    from .models import SurveyResponse

    return list(
        SurveyResponse.objects.filter(customer_id=customer_id)
        .select_related("survey")
        .order_by("-answered_at")
    )


def point_cost():
    """What a redeemed point costs the shop (analytics settings), without creating the row."""
    from .models import AnalyticsSettings

    cost = AnalyticsSettings.objects.filter(pk=1).values_list("point_cost", flat=True).first()
    return cost if cost is not None else AnalyticsSettings._meta.get_field("point_cost").default
