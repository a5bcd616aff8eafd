"""Staff pages of the analytics (/staff/analytics/): KPIs with charts, cohorts, the
program's effect, per-customer scores, and a CSV download of every table.

They read the latest snapshot only; nothing is computed on page load. Every table a page
shows is built by one function registered under a slug in TABLES, and the CSV download of
that slug calls the same function: the file always holds the rows the page shows (all
matching rows, for the paginated customer list).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property, partial, wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import formats
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.roles import EXPORT_DASHBOARDS, VIEW_DASHBOARDS

from . import charts, selectors
from .models import AnalyticsRun, CohortCell, CustomerScore, MetricValue, ModelFit, ProgramEffect

PAGE_SIZE = 50
PERIODS = {"month": gettext_lazy("Month"), "quarter": gettext_lazy("Quarter"), "year": gettext_lazy("Year")}
SEGMENT_NAMES = {
    "all": gettext_lazy("All shoppers"),
    "members": gettext_lazy("Members"),
    "non_members": gettext_lazy("Non-members"),
    "light": gettext_lazy("Light buyers"),
    "medium": gettext_lazy("Medium buyers"),
    "heavy": gettext_lazy("Heavy buyers"),
}
OUTCOME_NAMES = {
    "purchase_days": gettext_lazy("Purchase days per member per month"),
    "spend": gettext_lazy("Spend per member per month"),
    "rpr": gettext_lazy("Repeat purchase rate (365 days)"),
    "crr": gettext_lazy("Customer retention rate (last complete month)"),
}
NAIVE_NAMES = {
    "spend": gettext_lazy("Spend per active customer per month (365 days)"),
    "rpr": gettext_lazy("Repeat purchase rate (365 days)"),
    "crr": gettext_lazy("Customer retention rate (last complete month)"),
}
COVARIATE_NAMES = {
    "recency": gettext_lazy("Recency (days since last purchase)"),
    "frequency": gettext_lazy("Frequency (purchase days before)"),
    "monetary": gettext_lazy("Monetary value (spend before)"),
    "tenure": gettext_lazy("Tenure (days since first purchase)"),
    "history_frequency": gettext_lazy("Purchase days per month, whole history"),
}
PARAMETER_NAMES = {
    "margin": gettext_lazy("Gross margin"),
    "annual_discount_rate": gettext_lazy("Annual discount rate"),
    "clv_horizon_months": gettext_lazy("CLV horizon (months)"),
    "churn_days": gettext_lazy("Churned after (days without purchase)"),
    "point_cost": gettext_lazy("Cost of one point"),
    "currency": gettext_lazy("Currency"),
    "windows": gettext_lazy("Trailing windows (days)"),
    "months_back": gettext_lazy("Months of history shown"),
    "effect_months": gettext_lazy("Months before and after enrollment"),
    "effect_cohorts": gettext_lazy("Enrollment cohorts estimated"),
    "effect_controls_per_cohort": gettext_lazy("Candidate non-members per cohort (at most)"),
    "bootstrap": gettext_lazy("Bootstrap draws"),
    "seed": gettext_lazy("Random seed"),
    "churn_rule": gettext_lazy("Churn rule"),
}


CHURN_RULES = {
    "tau": gettext_lazy("no purchase day within the churn days"),
    "p_alive<0.5 (tau for one-time buyers)": gettext_lazy(
        "P(alive) below 0.5 (one-time buyers: no purchase day within the churn days)"
    ),
}


# --- Formatting ------------------------------------------------------------------------------


def _number(value, places: int) -> str:
    # Rounded first: Django's number_format cuts the digits off (66.66… would show as 66.6).
    return formats.number_format(round(value, places), places, use_l10n=True, force_grouping=True)


def _percent(value) -> str:
    return f"{_number(float(value) * 100, 1)} %"


FORMATS: dict[str, Callable] = {
    "text": str,
    "longtext": str,
    "int": lambda v: _number(round(float(v)), 0),
    "num1": lambda v: _number(float(v), 1),
    "num2": lambda v: _number(float(v), 2),
    "num3": lambda v: _number(float(v), 3),
    "money": lambda v: _number(Decimal(str(v)), 2),
    "pct": _percent,  # a share 0…1 shown as a percentage
    "score": lambda v: _number(float(v), 1),  # already on its scale (NPS −100…100)
    "pct100": lambda v: f"{_number(float(v), 1)} %",  # already a percentage (CSAT)
    # Counts without decimals, amounts with two (numerators and denominators of any metric).
    "auto": lambda v: _number(float(v), 0 if float(v).is_integer() else 2),
    "month": lambda v: v.strftime("%Y-%m"),
    "date": lambda v: v.isoformat(),
    "bool": lambda v: _("yes") if v else _("no"),
    "complete": lambda v: "" if v else _("not ended"),
}


TEXT_KINDS = ("text", "longtext", "month", "date", "bool", "complete")


def display(value, kind: str) -> str:
    """A value as a page shows it, in the reader's language; "–" for no value (an empty
    denominator, METRICS.md: never 0)."""
    if value is None or value == "":
        return "–" if kind != "complete" else ""
    return FORMATS[kind](value)


def raw(value):
    """A value as the CSV holds it: plain numbers, ISO dates, true/false, empty for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _period_label(m: MetricValue) -> str:
    start = m.period_start
    if start is None:
        return ""
    if m.period == "quarter":
        return f"{start.year} Q{(start.month - 1) // 3 + 1}"
    if m.period == "year":
        return str(start.year)
    return start.strftime("%Y-%m")


# --- Tables --------------------------------------------------------------------------------


@dataclass
class Column:
    key: str
    label: str
    kind: str = "text"


@dataclass
class Table:
    slug: str
    caption: str
    columns: list[Column]
    rows: Iterable[dict]
    note: str = ""
    query: dict = field(default_factory=dict)
    # Per-row formats for a column whose rows differ in kind (the key figures): row["_kinds"].

    @property
    def csv_url(self) -> str:
        url = reverse("analytics-csv", args=[self.slug])
        return f"{url}?{urlencode(self.query)}" if self.query else url

    def display_rows(self) -> list[list[tuple[str, str, str]]]:
        """Per row, per column: (text, CSS class, link or "")."""
        out = []
        for row in self.rows:
            kinds, links = row.get("_kinds", {}), row.get("_links", {})
            cells = []
            for c in self.columns:
                kind = kinds.get(c.key, c.kind)
                css = "an-num" if kind not in TEXT_KINDS else f"an-{kind}"
                cells.append((display(row.get(c.key), kind), css, links.get(c.key, "")))
            out.append(cells)
        return out

    @property
    def header(self) -> list[tuple[str, str]]:
        return [(c.label, "an-num" if c.kind not in TEXT_KINDS else f"an-{c.kind}") for c in self.columns]

    def raw_rows(self) -> Iterable[list]:
        for row in self.rows:
            yield [raw(row.get(c.key)) for c in self.columns]


class Snapshot:
    """What one run wrote, read once per request: the tables and charts of a page share it."""

    def __init__(self, run: AnalyticsRun):
        self.run = run
        self.currency = run.parameters.get("currency", settings.PROGRAM_CURRENCY)

    @cached_property
    def metrics(self) -> dict:
        return selectors.metrics_index(self.run)

    def series(self, metric: str, period: str, segment: str = "all") -> list[MetricValue]:
        return self.metrics.get((metric, period, segment), [])

    def one(self, metric: str, period: str = "asof", segment: str = "all") -> MetricValue | None:
        values = self.series(metric, period, segment)
        return values[0] if values else None

    def value(self, metric: str, period: str = "asof", segment: str = "all") -> float | None:
        m = self.one(metric, period, segment)
        return None if m is None else m.value

    def by_start(self, metric: str, period: str, segment: str = "all") -> dict:
        return {m.period_start: m for m in self.series(metric, period, segment)}

    def periods(self, period: str) -> list[MetricValue]:
        """The periods of a kind the run covers, oldest first (from the active-customer counts,
        which exist for every period)."""
        return self.series("active_customers", period)

    def last_complete(self, metric: str, period: str = "month", segment: str = "all") -> MetricValue | None:
        done = [m for m in self.series(metric, period, segment) if m.complete]
        return done[-1] if done else None

    @cached_property
    def effects(self) -> list[ProgramEffect]:
        return selectors.effects_of(self.run)

    @cached_property
    def fits(self) -> dict[str, ModelFit]:
        return selectors.fits_of(self.run)

    @property
    def windows(self) -> list[int]:
        return list(self.run.parameters.get("windows", [90, 365]))

    @property
    def long_window(self) -> int:
        return max(self.windows) if self.windows else 365

    def money(self, label: str) -> str:
        return f"{label} ({self.currency})"


TABLES: dict[str, Callable[[Snapshot, QueryDict], Table]] = {}


def table(*slugs: str):
    """Register a table builder under its slug(s) (for CSV downloads and the page alike)."""

    def register(builder):
        for slug in slugs:
            TABLES[slug] = builder
        return builder

    return register


def _value_of(m: MetricValue | None):
    return None if m is None else m.value


@table("key-figures")
def key_figures_table(s: Snapshot, params: QueryDict) -> Table:
    w = s.long_window
    rows = []

    def add(key, name, m, kind, basis, *, value=None, numerator=True):
        rows.append(
            {
                "_key": key,
                "figure": name,
                "value": value if value is not None else _value_of(m),
                "basis": basis,
                "numerator": m.numerator if m is not None and numerator else None,
                "denominator": m.denominator if m is not None and numerator else None,
                "_kinds": {"value": kind, "numerator": "auto", "denominator": "auto"},
            }
        )

    crr = s.last_complete("crr")
    month = crr.period_start.strftime("%Y-%m") if crr else "–"
    last_month = _("last complete month (%(month)s)") % {"month": month}
    trailing = _("trailing %(days)s days") % {"days": w}
    year = _("trailing 12 months")
    as_of = _("as of %(date)s") % {"date": s.run.as_of.isoformat()}
    add("crr", _("Customer retention rate (CRR)"), crr, "pct", last_month)
    add("churn", _("Churn rate"), s.last_complete("churn"), "pct", last_month)
    annual = s.last_complete("churn_annualised")
    add(
        "churn_annualised",
        _("Churn rate, monthly annualised: 1 − (1 − c)¹²"),
        annual,
        "pct",
        last_month,
        numerator=False,
    )
    add("rpr", _("Repeat purchase rate"), s.one("rpr", "window", f"all:{w}"), "pct", trailing)
    add(
        "frequency",
        _("Purchase days per active customer"),
        s.one("frequency", "window", f"all:{w}"),
        "num2",
        trailing,
    )
    add(
        "aov",
        s.money(_("Average order value (per purchase day)")),
        s.one("aov", "window", f"all:{w}"),
        "money",
        trailing,
    )
    add("shoppers", _("Active shoppers"), s.one("active_customers", "window", f"all:{w}"), "int", trailing)
    add("members", _("Active members"), s.one("active_customers", "window", f"members:{w}"), "int", trailing)
    gaps = s.one("inter_purchase_days", "window", f"all:{w}")
    add("gap", _("Median days between purchase days"), gaps, "num1", trailing, numerator=False)
    add(
        "second_90",
        _("Second purchase within 90 days"),
        s.one("second_purchase_rate", "asof", "90"),
        "pct",
        as_of,
    )
    add(
        "historical_clv",
        s.money(_("Historical CLV, mean (net revenue × margin)")),
        s.one("historical_clv"),
        "money",
        as_of,
    )
    add("simple_clv", s.money(_("Simple predictive CLV")), s.one("simple_clv"), "money", as_of)
    add(
        "predicted_clv",
        s.money(_("Predicted CLV, mean (BG/NBD × Gamma-Gamma)")),
        s.one("predicted_clv"),
        "money",
        as_of,
    )
    add("nps", _("NPS, all answers"), s.one("nps"), "score", as_of)
    csat = s.one("csat")
    add("csat", _("CSAT: share satisfied (4–5), all answers"), csat, "pct100", as_of)
    add(
        "csat_mean",
        _("CSAT, mean score (1–5)"),
        csat,
        "num2",
        as_of,
        value=(csat.extra.get("mean") if csat else None),
        numerator=False,
    )
    add("points_outstanding", _("Points outstanding"), s.one("points_outstanding"), "int", as_of)
    add(
        "points_liability",
        s.money(_("Points liability (expected cost)")),
        s.one("points_liability"),
        "money",
        as_of,
    )
    add("breakage", _("Breakage (expired ÷ expired and redeemed)"), s.one("points_breakage"), "pct", as_of)
    add("redemption", _("Redemption rate"), s.last_complete("redemption_rate"), "pct", last_month)
    add("cac", s.money(_("CAC, trailing 12 months")), s.one("cac", "window"), "money", year)
    add("clv_cac", _("CLV : CAC"), s.one("clv_cac", "window"), "num2", year)
    return Table(
        "key-figures",
        _("Key figures"),
        [
            Column("figure", _("Figure")),
            Column("value", _("Value"), "num2"),
            Column("basis", _("Basis")),
            Column("numerator", _("Numerator"), "auto"),
            Column("denominator", _("Denominator"), "auto"),
        ],
        rows,
        note=_("– means there was nothing to divide by (no customers in the base)."),
    )


def _period_param(params: QueryDict) -> str:
    period = params.get("period", "month")
    return period if period in PERIODS else "month"


def retention_table(s: Snapshot, params: QueryDict, *, period: str | None = None) -> Table:
    period = period or _period_param(params)
    crr = s.by_start("crr", period)
    churn = s.by_start("churn", period)
    annual = s.by_start("churn_annualised", period)
    members = s.by_start("crr", period, "members")
    non_members = s.by_start("crr", period, "non_members")
    rows = []
    for p in s.periods(period):
        c = crr.get(p.period_start)
        rows.append(
            {
                "period": _period_label(p),
                "complete": p.complete,
                "base": c.denominator if c else None,
                "retained": c.numerator if c else None,
                "crr": _value_of(c),
                "churn": _value_of(churn.get(p.period_start)),
                "churn_annualised": _value_of(annual.get(p.period_start)),
                "crr_members": _value_of(members.get(p.period_start)),
                "crr_non_members": _value_of(non_members.get(p.period_start)),
            }
        )
    columns = [
        Column("period", str(PERIODS[period])),
        Column("complete", _("Ended?"), "complete"),
        Column("base", _("Active in the period before"), "int"),
        Column("retained", _("Of them active again"), "int"),
        Column("crr", _("CRR"), "pct"),
        Column("churn", _("Churn"), "pct"),
    ]
    if period == "month":
        columns.append(Column("churn_annualised", _("Churn, annualised"), "pct"))
    columns += [
        Column("crr_members", _("CRR members"), "pct"),
        Column("crr_non_members", _("CRR non-members"), "pct"),
    ]
    return Table(
        f"retention-{period}",
        _("Retention and churn by %(period)s") % {"period": str(PERIODS[period]).lower()},
        columns,
        rows,
        note=_(
            "CRR = customers active in the period and in the one before ÷ customers active in the one before."
        ),
    )


@table("repeat-month")
def repeat_table(s: Snapshot, params: QueryDict) -> Table:
    rpr, freq, aov = s.by_start("rpr", "month"), s.by_start("frequency", "month"), s.by_start("aov", "month")
    revenue = s.by_start("net_revenue", "month")
    rows = []
    for p in s.periods("month"):
        r, f, a = rpr.get(p.period_start), freq.get(p.period_start), aov.get(p.period_start)
        rows.append(
            {
                "period": _period_label(p),
                "complete": p.complete,
                "active": p.value,
                "repeaters": r.numerator if r else None,
                "rpr": _value_of(r),
                "purchase_days": f.numerator if f else None,
                "frequency": _value_of(f),
                "net_revenue": _value_of(revenue.get(p.period_start)),
                "aov": _value_of(a),
            }
        )
    return Table(
        "repeat-month",
        _("Repeat purchasing by month"),
        [
            Column("period", _("Month")),
            Column("complete", _("Ended?"), "complete"),
            Column("active", _("Active shoppers"), "int"),
            Column("repeaters", _("With 2+ purchase days"), "int"),
            Column("rpr", _("Repeat purchase rate"), "pct"),
            Column("purchase_days", _("Purchase days"), "int"),
            Column("frequency", _("Purchase days per active shopper"), "num2"),
            Column("net_revenue", s.money(_("Net revenue")), "money"),
            Column("aov", s.money(_("AOV")), "money"),
        ],
        rows,
    )


@table("windows")
def windows_table(s: Snapshot, params: QueryDict) -> Table:
    rows = []
    for days in s.windows:
        for segment in ("all", "members", "non_members"):
            key = f"{segment}:{days}"
            gaps = s.one("inter_purchase_days", "window", key)
            rows.append(
                {
                    "window": days,
                    "segment": str(SEGMENT_NAMES[segment]),
                    "active": s.value("active_customers", "window", key),
                    "rpr": s.value("rpr", "window", key),
                    "frequency": s.value("frequency", "window", key),
                    "aov": s.value("aov", "window", key),
                    "net_revenue": s.value("net_revenue", "window", key),
                    "gap_p25": gaps.extra.get("p25") if gaps else None,
                    "gap_median": _value_of(gaps),
                    "gap_p75": gaps.extra.get("p75") if gaps else None,
                    "gaps": gaps.extra.get("gaps") if gaps else None,
                }
            )
    return Table(
        "windows",
        _("Trailing windows ending at the as-of date"),
        [
            Column("window", _("Days"), "int"),
            Column("segment", _("Shoppers")),
            Column("active", _("Active"), "int"),
            Column("rpr", _("Repeat purchase rate"), "pct"),
            Column("frequency", _("Purchase days per active shopper"), "num2"),
            Column("aov", s.money(_("AOV")), "money"),
            Column("net_revenue", s.money(_("Net revenue")), "money"),
            Column("gap_p25", _("Days between purchase days: 25th percentile"), "num1"),
            Column("gap_median", _("median"), "num1"),
            Column("gap_p75", _("75th percentile"), "num1"),
            Column("gaps", _("Gaps counted"), "int"),
        ],
        rows,
    )


@table("second-purchase")
def second_purchase_table(s: Snapshot, params: QueryDict) -> Table:
    rows = []
    for days in ("30", "60", "90"):
        m = s.one("second_purchase_rate", "asof", days)
        rows.append(
            {
                "within": int(days),
                "eligible": m.denominator if m else None,
                "repeated": m.numerator if m else None,
                "rate": _value_of(m),
            }
        )
    return Table(
        "second-purchase",
        _("Second purchase within d days of the first"),
        [
            Column("within", _("Within (days)"), "int"),
            Column("eligible", _("Customers whose first purchase is at least d days old"), "int"),
            Column("repeated", _("Of them with a second purchase day within d days"), "int"),
            Column("rate", _("Second-purchase rate"), "pct"),
        ],
        rows,
    )


@table("active-month")
def active_table(s: Snapshot, params: QueryDict) -> Table:
    members = s.by_start("active_customers", "month", "members")
    non_members = s.by_start("active_customers", "month", "non_members")
    new = s.by_start("new_members", "month")
    rows = []
    for p in s.periods("month"):
        m = _value_of(members.get(p.period_start))
        rows.append(
            {
                "period": _period_label(p),
                "complete": p.complete,
                "shoppers": p.value,
                "members": m,
                "non_members": _value_of(non_members.get(p.period_start)),
                "member_share": (m / p.value) if (m is not None and p.value) else None,
                "new_members": _value_of(new.get(p.period_start)),
            }
        )
    return Table(
        "active-month",
        _("Active members and shoppers by month"),
        [
            Column("period", _("Month")),
            Column("complete", _("Ended?"), "complete"),
            Column("shoppers", _("Active shoppers"), "int"),
            Column("members", _("of them members"), "int"),
            Column("non_members", _("non-members"), "int"),
            Column("member_share", _("Members' share"), "pct"),
            Column("new_members", _("New members"), "int"),
        ],
        rows,
        note=_("Members and non-members by membership at the as-of date."),
    )


def _clv_distribution(s: Snapshot) -> MetricValue | None:
    return s.one("clv_distribution", "asof", "predicted_clv") or s.one(
        "clv_distribution", "asof", "historical_clv"
    )


@table("clv-distribution")
def clv_distribution_table(s: Snapshot, params: QueryDict) -> Table:
    distribution = _clv_distribution(s)
    bins = distribution.extra.get("bins", []) if distribution else []
    total = sum(b["customers"] for b in bins)
    predicted = distribution is not None and distribution.segment == "predicted_clv"
    return Table(
        "clv-distribution",
        _("Distribution of predicted CLV") if predicted else _("Distribution of historical CLV"),
        [
            Column("from", s.money(_("From")), "money"),
            Column("to", s.money(_("To")), "money"),
            Column("customers", _("Customers"), "int"),
            Column("share", _("Share"), "pct"),
        ],
        [
            {
                "from": b["from"],
                "to": b["to"],
                "customers": b["customers"],
                "share": b["customers"] / total if total else None,
            }
            for b in bins
        ],
        note="" if predicted else _("No model-based CLV in this run: the distribution is of historical CLV."),
    )


def _customer_name(customer) -> str:
    return f"{customer.first_name} {customer.last_name}".strip()


@table("top-customers")
def top_customers_table(s: Snapshot, params: QueryDict) -> Table:
    rows = [
        {
            "rank": i,
            "customer": score.customer.external_ref,
            "name": _customer_name(score.customer),
            "member": score.is_member,
            "purchase_days": score.purchase_days,
            "net_revenue": score.net_revenue,
            "historical_clv": score.historical_clv,
            "p_alive": score.p_alive,
            "expected_365": score.expected_365,
            "predicted_clv": score.predicted_clv,
        }
        for i, score in enumerate(selectors.top_customers(s.run, limit=20), start=1)
    ]
    return Table(
        "top-customers",
        _("Top 20 customers by CLV"),
        [
            Column("rank", "#", "int"),
            Column("customer", _("Customer number")),
            Column("name", _("Name")),
            Column("member", _("Member"), "bool"),
            Column("purchase_days", _("Purchase days"), "int"),
            Column("net_revenue", s.money(_("Net revenue")), "money"),
            Column("historical_clv", s.money(_("Historical CLV")), "money"),
            Column("p_alive", _("P(alive)"), "pct"),
            Column("expected_365", _("Expected purchase days, next 365 days"), "num1"),
            Column("predicted_clv", s.money(_("Predicted CLV")), "money"),
        ],
        rows,
    )


@table("model-fits")
def model_fits_table(s: Snapshot, params: QueryDict) -> Table:
    rows = [
        {
            "model": fit.get_model_display(),
            "parameters": ", ".join(f"{k} = {v:.4g}" for k, v in fit.parameters.items()),
            "log_likelihood": fit.log_likelihood,
            "customers": fit.customers,
            "converged": fit.converged,
            "time_unit": fit.time_unit,
            "message": fit.message,
        }
        for fit in s.fits.values()
    ]
    return Table(
        "model-fits",
        _("Model fits (maximum likelihood)"),
        [
            Column("model", _("Model")),
            Column("parameters", _("Parameters")),
            Column("log_likelihood", _("Log-likelihood"), "num1"),
            Column("customers", _("Customers"), "int"),
            Column("converged", _("Converged"), "bool"),
            Column("time_unit", _("Time unit")),
            Column("message", _("Optimiser message"), "longtext"),
        ],
        rows,
    )


@table("satisfaction-month")
def satisfaction_table(s: Snapshot, params: QueryDict) -> Table:
    nps, csat = s.by_start("nps", "month"), s.by_start("csat", "month")
    rows = []
    # Every month from the first answer on: a month without answers is a row of none.
    for month in _periods_filled(s, [*nps.values(), *csat.values()], "month"):
        start = month.period_start
        n, c = nps.get(start), csat.get(start)
        rows.append(
            {
                "period": start.strftime("%Y-%m"),
                "complete": month.complete,
                "nps_answers": n.denominator if n else 0,
                "promoters": n.extra.get("promoters") if n else None,
                "detractors": n.extra.get("detractors") if n else None,
                "nps": _value_of(n),
                "csat_answers": c.denominator if c else 0,
                "csat": _value_of(c),
                "csat_mean": c.extra.get("mean") if c else None,
            }
        )
    return Table(
        "satisfaction-month",
        _("NPS and CSAT by month"),
        [
            Column("period", _("Month")),
            Column("complete", _("Ended?"), "complete"),
            Column("nps_answers", _("NPS answers"), "int"),
            Column("promoters", _("Promoters (9–10)"), "int"),
            Column("detractors", _("Detractors (0–6)"), "int"),
            Column("nps", _("NPS"), "score"),
            Column("csat_answers", _("CSAT answers"), "int"),
            Column("csat", _("CSAT: share satisfied"), "pct100"),
            Column("csat_mean", _("CSAT, mean"), "num2"),
        ],
        rows,
    )


@table("surveys")
def surveys_table(s: Snapshot, params: QueryDict) -> Table:
    values = [
        m
        for (metric, period, segment), ms in s.metrics.items()
        if metric in ("nps", "csat") and period == "asof" and segment != "all"
        for m in ms
    ]
    surveys = selectors.surveys_by_id([m.segment for m in values])
    rows = []
    for m in sorted(values, key=lambda m: (m.metric, m.segment)):
        survey = surveys.get(int(m.segment)) if m.segment.isdigit() else None
        rows.append(
            {
                "survey": survey.name if survey else m.segment,
                "kind": m.metric.upper(),
                "answers": m.denominator,
                "score": m.value,
                "mean": m.extra.get("mean"),
                "_kinds": {"score": "pct100" if m.metric == "csat" else "score"},
            }
        )
    return Table(
        "surveys",
        _("Per survey, all answers to the as-of date"),
        [
            Column("survey", _("Survey")),
            Column("kind", _("Kind")),
            Column("answers", _("Answers"), "int"),
            Column("score", _("NPS, or CSAT share satisfied"), "score"),
            Column("mean", _("Mean (CSAT)"), "num2"),
        ],
        rows,
    )


@table("redemption-month")
def redemption_table(s: Snapshot, params: QueryDict) -> Table:
    rows = [
        {
            "period": _period_label(m),
            "complete": m.complete,
            "issued": m.denominator,
            "redeemed": m.numerator,
            "rate": m.value,
        }
        for m in s.series("redemption_rate", "month")
    ]
    return Table(
        "redemption-month",
        _("Points redeemed ÷ points issued, by month"),
        [
            Column("period", _("Month")),
            Column("complete", _("Ended?"), "complete"),
            Column("issued", _("Points issued"), "int"),
            Column("redeemed", _("Points redeemed, net of returned vouchers"), "int"),
            Column("rate", _("Redemption rate"), "pct"),
        ],
        rows,
    )


@table("acquisition-month")
def acquisition_table(s: Snapshot, params: QueryDict) -> Table:
    cac = s.by_start("cac", "month")
    rows = []
    for m in s.series("new_members", "month"):
        c = cac.get(m.period_start)
        rows.append(
            {
                "period": _period_label(m),
                "complete": m.complete,
                "new_members": m.value,
                "spend": c.numerator if c else None,
                "cac": _value_of(c),
            }
        )
    return Table(
        "acquisition-month",
        _("Acquisition spend and CAC by month"),
        [
            Column("period", _("Month")),
            Column("complete", _("Ended?"), "complete"),
            Column("new_members", _("New members"), "int"),
            Column("spend", s.money(_("Acquisition spend")), "money"),
            Column("cac", s.money(_("CAC")), "money"),
        ],
        rows,
        note=_("CAC = acquisition spend ÷ members who enrolled that month; – where no spend was entered."),
    )


# --- Cohorts ---------------------------------------------------------------------------------

COHORT_SLUGS = {"cohorts-first-purchase": "first_purchase", "cohorts-enrollment": "enrollment"}


def _cohort_kind(params: QueryDict) -> str:
    kind = params.get("kind", CohortCell.Kind.FIRST_PURCHASE)
    return kind if kind in CohortCell.Kind.values else CohortCell.Kind.FIRST_PURCHASE


def _month_after(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def cohort_cells_table(s: Snapshot, params: QueryDict, *, kind: str | None = None) -> Table:
    kind = kind or _cohort_kind(params)
    rows = []
    for row in selectors.cohort_table(s.run, kind=kind):
        for cell in row["cells"]:
            rows.append(
                {
                    "cohort": row["cohort"].strftime("%Y-%m"),
                    "size": cell.size,
                    "k": cell.period,
                    "month": _month_after(row["cohort"], cell.period).strftime("%Y-%m"),
                    "active": cell.active,
                    "retention": cell.retention,
                    "active_or_later": cell.active_or_later,
                    "rolling_retention": cell.rolling_retention,
                    "complete": cell.complete,
                }
            )
    slug = next(slug for slug, k in COHORT_SLUGS.items() if k == kind)
    return Table(
        slug,
        CohortCell.Kind(kind).label,
        [
            Column("cohort", _("Cohort")),
            Column("size", _("Cohort size"), "int"),
            Column("k", _("Month k"), "int"),
            Column("month", _("Calendar month")),
            Column("active", _("Bought in month k"), "int"),
            Column("retention", _("Share"), "pct"),
            Column("active_or_later", _("Bought in month k or later"), "int"),
            Column("rolling_retention", _("Share (k or later)"), "pct"),
            Column("complete", _("Ended?"), "complete"),
        ],
        rows,
    )


TABLES.update({f"retention-{period}": partial(retention_table, period=period) for period in PERIODS})
TABLES.update({slug: partial(cohort_cells_table, kind=kind) for slug, kind in COHORT_SLUGS.items()})


# --- The program's effect ------------------------------------------------------------------------


def _effects(s: Snapshot, method: str, *, pooled: bool | None = None, segment: str | None = None):
    out = [e for e in s.effects if e.method == method]
    if pooled is not None:
        out = [e for e in out if (e.cohort is None) == pooled]
    if segment is not None:
        out = [e for e in out if e.segment == segment]
    return out


def _verdict(e: ProgramEffect) -> str:
    return _reading(e.estimate, e.ci_low, e.ci_high)


def _reading(estimate, low, high) -> str:
    """An estimate with its 95 % interval in words a marketer understands."""
    if estimate is None or low is None or high is None:
        return _("not enough data")
    if low > 0:
        return _("more than without the program")
    if high < 0:
        return _("less than without the program")
    return _("not distinguishable from zero")


def _effect_kind(outcome: str) -> str:
    return {"spend": "money", "rpr": "pct", "crr": "pct"}.get(outcome, "num2")


EFFECT_VALUES = (
    "estimate",
    "ci_low",
    "ci_high",
    "treated_pre",
    "treated_post",
    "control_pre",
    "control_post",
)


def _effect_row(e: ProgramEffect, **more) -> dict:
    kind = _effect_kind(e.outcome)
    return {
        "outcome": str(OUTCOME_NAMES.get(e.outcome, e.outcome)),
        "estimate": e.estimate,
        "ci_low": e.ci_low,
        "ci_high": e.ci_high,
        "verdict": _verdict(e),
        "treated": e.treated,
        "controls": e.controls,
        "treated_pre": e.extra.get("treated_pre"),
        "treated_post": e.extra.get("treated_post"),
        "control_pre": e.extra.get("control_pre"),
        "control_post": e.extra.get("control_post"),
        "_kinds": dict.fromkeys(EFFECT_VALUES, kind),
        **more,
    }


def _effect_columns(*first: Column) -> list[Column]:
    return [
        *first,
        Column("outcome", _("Outcome")),
        Column("estimate", _("Effect (difference in differences)"), "num2"),
        Column("ci_low", _("%(level)s interval: from") % {"level": "95 %"}, "num2"),
        Column("ci_high", _("to"), "num2"),
        Column("verdict", _("Reading")),
        Column("treated", _("Members"), "int"),
        Column("controls", _("Matched non-members"), "int"),
        Column("treated_pre", _("Members before"), "num2"),
        Column("treated_post", _("Members after"), "num2"),
        Column("control_pre", _("Non-members before"), "num2"),
        Column("control_post", _("Non-members after"), "num2"),
    ]


@table("effect-holdout")
def holdout_table(s: Snapshot, params: QueryDict) -> Table:
    return Table(
        "effect-holdout",
        _("Randomised holdout: intention-to-treat difference"),
        _effect_columns(),
        [_effect_row(e) for e in _effects(s, ProgramEffect.Method.HOLDOUT)],
    )


@table("effect-naive")
def naive_table(s: Snapshot, params: QueryDict) -> Table:
    rows = []
    for e in _effects(s, ProgramEffect.Method.NAIVE):
        kind = _effect_kind(e.outcome)
        rows.append(
            {
                "outcome": str(NAIVE_NAMES.get(e.outcome, e.outcome)),
                "members": e.extra.get("members"),
                "non_members": e.extra.get("non_members"),
                "gap": e.estimate,
                "_kinds": {"members": kind, "non_members": kind, "gap": kind},
            }
        )
    return Table(
        "effect-naive",
        _("Naive gap: members vs non-members as they are (biased)"),
        [
            Column("outcome", _("Outcome")),
            Column("members", _("Members"), "num2"),
            Column("non_members", _("Non-members"), "num2"),
            Column("gap", _("Gap (biased)"), "num2"),
        ],
        rows,
        note=_(
            "Biased: heavier buyers join the program more often, so members looked better before they joined."
        ),
    )


@table("effect-pooled")
def pooled_table(s: Snapshot, params: QueryDict) -> Table:
    return Table(
        "effect-pooled",
        _("Difference in differences around enrollment, all cohorts pooled"),
        _effect_columns(),
        [_effect_row(e) for e in _effects(s, ProgramEffect.Method.DID, pooled=True, segment="all")],
        note=_("Before and after: per month, in the months before and after the enrollment month."),
    )


@table("effect-balance")
def balance_table(s: Snapshot, params: QueryDict) -> Table:
    pooled = _effects(s, ProgramEffect.Method.DID, pooled=True, segment="all")
    balance = pooled[0].extra.get("balance", []) if pooled else []
    rows = [
        {
            "covariate": str(COVARIATE_NAMES.get(b["covariate"], b["covariate"])),
            "before": b.get("before"),
            "after": b.get("after"),
            "balanced": None if b.get("after") is None else abs(b["after"]) < 0.1,
        }
        for b in balance
    ]
    return Table(
        "effect-balance",
        _("Balance: standardised mean differences before and after matching"),
        [
            Column("covariate", _("Pre-enrollment covariate")),
            Column("before", _("Before matching"), "num3"),
            Column("after", _("After matching"), "num3"),
            Column("balanced", _("Below 0.1 after?"), "bool"),
        ],
        rows,
        note=_("Target: below 0.1 in absolute value after matching (each covariate as log(1 + value))."),
    )


@table("effect-segments")
def segments_table(s: Snapshot, params: QueryDict) -> Table:
    rows = []
    for segment in ("light", "medium", "heavy"):
        for e in _effects(s, ProgramEffect.Method.DID, pooled=True, segment=segment):
            low_high = e.extra.get("pre_purchase_days_per_month") or [None, None]
            rows.append(
                _effect_row(
                    e,
                    segment=str(SEGMENT_NAMES[segment]),
                    pre_from=low_high[0],
                    pre_to=low_high[1],
                )
            )
    return Table(
        "effect-segments",
        _("By pre-enrollment segment"),
        _effect_columns(
            Column("segment", _("Segment")),
            Column("pre_from", _("Purchase days per month before: from"), "num2"),
            Column("pre_to", _("to"), "num2"),
        ),
        rows,
        note=_("Segments: thirds of the members by purchase days per month before enrollment."),
    )


@table("effect-cohorts")
def effect_cohorts_table(s: Snapshot, params: QueryDict) -> Table:
    rows = [
        _effect_row(e, cohort=e.cohort.strftime("%Y-%m"))
        for e in sorted(
            _effects(s, ProgramEffect.Method.DID, pooled=False), key=lambda e: (e.cohort, e.outcome)
        )
    ]
    return Table(
        "effect-cohorts",
        _("By enrollment cohort"),
        _effect_columns(Column("cohort", _("Enrolled in"))),
        rows,
    )


@table("program-value")
def program_value_table(s: Snapshot, params: QueryDict) -> Table:
    days = s.one("incremental_purchase_days", "window")
    revenue = s.one("incremental_revenue", "window")
    roi = s.one("program_roi", "window")
    roi_extra = roi.extra if roi else {}

    def interval(m: MetricValue | None, scale: float | None = 1.0) -> tuple:
        """The 95 % interval of a total (the pooled estimate's interval × the member-months), scaled."""
        if m is None or scale is None or m.extra.get("ci_low") is None or m.extra.get("ci_high") is None:
            return None, None
        return m.extra["ci_low"] * scale, m.extra["ci_high"] * scale

    # The totals, the margin and the ROI are the pooled estimate times fixed numbers, so their
    # intervals are its interval times the same numbers: a point estimate alone would read as
    # certain when the estimate cannot be told from zero.
    margin = roi_extra.get("margin")
    revenue_interval = interval(revenue)
    margin_interval = interval(revenue, margin)
    costs = roi_extra.get("program_costs")
    roi_interval = (None, None)
    if costs and margin_interval[0] is not None:
        rewards = roi_extra.get("rewards_cost") or 0
        roi_interval = tuple((bound - rewards - costs) / costs for bound in margin_interval)

    def with_interval(row: dict, value, low_high: tuple, kind: str) -> dict:
        low, high = low_high
        return {
            **row,
            "ci_low": low,
            "ci_high": high,
            "verdict": _reading(value, low, high) if low is not None else "",
            "_kinds": {**row["_kinds"], "ci_low": kind, "ci_high": kind},
        }

    rows = [
        with_interval(
            {
                "figure": _("Incremental purchase days, last 12 months"),
                "value": _value_of(days),
                "per_member_month": days.extra.get("per_member_month") if days else None,
                "_kinds": {"value": "num1", "per_member_month": "num3"},
            },
            _value_of(days),
            interval(days),
            "num1",
        ),
        with_interval(
            {
                "figure": s.money(_("Incremental revenue, last 12 months")),
                "value": _value_of(revenue),
                "per_member_month": revenue.extra.get("per_member_month") if revenue else None,
                "_kinds": {"value": "money", "per_member_month": "money"},
            },
            _value_of(revenue),
            revenue_interval,
            "money",
        ),
        with_interval(
            {
                "figure": s.money(_("Incremental margin")),
                "value": roi_extra.get("incremental_margin"),
                "_kinds": {"value": "money"},
            },
            roi_extra.get("incremental_margin"),
            margin_interval,
            "money",
        ),
        {
            "figure": s.money(_("Cost of rewards redeemed")),
            "value": roi_extra.get("rewards_cost"),
            "_kinds": {"value": "money"},
        },
        {
            "figure": s.money(_("Program costs entered")),
            "value": roi_extra.get("program_costs"),
            "_kinds": {"value": "money"},
        },
        {
            "figure": _("Program ROI: (incremental margin − rewards − program costs) ÷ program costs"),
            "value": _value_of(roi),
            "ci_low": roi_interval[0],
            "ci_high": roi_interval[1],
            "_kinds": {"value": "pct", "ci_low": "pct", "ci_high": "pct"},
        },
    ]
    member_months = (days.extra.get("member_months") if days else None) or 0
    return Table(
        "program-value",
        _("What the program adds, and what it costs"),
        [
            Column("figure", _("Figure")),
            Column("value", _("Value"), "num2"),
            Column("ci_low", _("%(level)s interval: from") % {"level": "95 %"}, "num2"),
            Column("ci_high", _("to"), "num2"),
            Column("verdict", _("Reading")),
            Column("per_member_month", _("Per member per month"), "num2"),
        ],
        rows,
        note=_(
            "The pooled difference in differences per member per month × %(n)s member-months in the "
            "last 12 months: each member's months after the month they joined, up to their last "
            "purchase (not the months after they stopped buying)."
        )
        % {"n": _number(member_months, 0)},
    )


# --- Customers -------------------------------------------------------------------------------


def _default_order(s: Snapshot) -> str:
    """Predicted CLV when the run has it, historical CLV otherwise."""
    return "-predicted_clv" if s.value("predicted_clv") is not None else "-historical_clv"


def _score_filters(s: Snapshot, params: QueryDict) -> dict:
    risk = params.get("risk", "")
    order = params.get("order", "")
    return {
        "q": params.get("q", "").strip()[:100],
        "risk": risk if risk in CustomerScore.Risk.values else "",
        "order": order if order.lstrip("-") in selectors.SCORE_ORDERS else _default_order(s),
    }


def _score_row(score: CustomerScore, *, link: bool) -> dict:
    row = {
        "customer": score.customer.external_ref,
        "name": _customer_name(score.customer),
        "member": score.is_member,
        "first_day": score.first_day,
        "last_day": score.last_day,
        "purchase_days": score.purchase_days,
        "net_revenue": score.net_revenue,
        "historical_clv": score.historical_clv,
        "p_alive": score.p_alive,
        "expected_30": score.expected_30,
        "expected_90": score.expected_90,
        "expected_365": score.expected_365,
        "predicted_clv": score.predicted_clv,
        "rfm": score.rfm_code,
        "rfm_score": score.rfm_score,
        "churn_risk": score.get_churn_risk_display(),
    }
    if link:
        row["_links"] = {"customer": reverse("admin:accounts_customer_change", args=[score.customer_id])}
    return row


@table("customer-scores")
def scores_table(
    s: Snapshot, params: QueryDict, *, rows: Iterable[CustomerScore] | None = None, link: bool = False
) -> Table:
    """The customers page shows one page of rows; the CSV streams every matching row."""
    filters = _score_filters(s, params)
    if rows is None:
        rows = selectors.scores_search(
            s.run, query=filters["q"], risk=filters["risk"], order=filters["order"]
        )
        rows = rows.iterator(chunk_size=2000)
    return Table(
        "customer-scores",
        _("Scores per customer"),
        [
            Column("customer", _("Customer number")),
            Column("name", _("Name")),
            Column("churn_risk", _("Churn risk")),
            Column("p_alive", _("P(alive)"), "pct"),
            Column("expected_30", _("Expected purchase days: 30 days"), "num2"),
            Column("expected_90", _("90 days"), "num2"),
            Column("expected_365", _("365 days"), "num2"),
            Column("predicted_clv", s.money(_("Predicted CLV")), "money"),
            Column("rfm", _("RFM (R, F, M: 1–5)")),
            Column("rfm_score", _("RFM score (3–15)"), "int"),
            Column("historical_clv", s.money(_("Historical CLV")), "money"),
            Column("net_revenue", s.money(_("Net revenue")), "money"),
            Column("purchase_days", _("Purchase days"), "int"),
            Column("first_day", _("First purchase"), "date"),
            Column("last_day", _("Last purchase"), "date"),
            Column("member", _("Member"), "bool"),
        ],
        (_score_row(score, link=link) for score in rows),
        query={k: v for k, v in filters.items() if v and not (k == "order" and v == _default_order(s))},
    )


def dashboard_view(permission: str):
    """Staff only (others go to the admin login), and of those only the roles with the
    permission (accounts.roles: analysts and program admins see the dashboards and may
    export them); a staff member without it gets 403, as in the admin."""

    def decorate(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            if not request.user.has_perm(permission):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return staff_member_required(checked)

    return decorate


# --- Pages -----------------------------------------------------------------------------------


def _parameters(run: AnalyticsRun) -> list[tuple[str, str]]:
    out = []
    # In a fixed order (PostgreSQL's jsonb keeps its own), the known ones first.
    keys = [k for k in PARAMETER_NAMES if k in run.parameters]
    keys += sorted(k for k in run.parameters if k not in PARAMETER_NAMES and k != "as_of")
    for key in keys:
        value = run.parameters[key]
        if key in ("margin", "annual_discount_rate") and isinstance(value, int | float):
            shown = _percent(value)
        elif key == "churn_rule":
            shown = str(CHURN_RULES.get(value, value))
        elif isinstance(value, list):
            shown = ", ".join(str(v) for v in value)
        else:
            shown = str(value)
        out.append((str(PARAMETER_NAMES.get(key, key)), shown))
    return out


def _context(request, snapshot: Snapshot | None, page: str, **extra) -> dict:
    run = snapshot.run if snapshot else None
    attempt = selectors.run_last_attempt()
    return {
        **admin.site.each_context(request),
        "run": run,
        "page": page,
        "parameters": _parameters(run) if run else [],
        "attempt": attempt if attempt and (run is None or attempt.pk != run.pk) else None,
        "title": extra.pop("title", _("Analytics")),
        "admin_costs_url": _admin_url("admin:analytics_monthlycost_changelist")
        if request.user.has_perm("analytics.add_monthlycost")
        else None,
        "can_export": request.user.has_perm(EXPORT_DASHBOARDS),
        **extra,
    }


def _admin_url(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:  # that admin is not registered
        return None


def _nightly_time() -> str | None:
    """When the beat schedule runs the full refresh (from settings, as shipped in code)."""
    for entry in getattr(settings, "CELERY_BEAT_SCHEDULE", {}).values():
        schedule = entry.get("schedule")
        if entry.get("task") == "analytics.refresh" and hasattr(schedule, "hour"):
            return f"{min(schedule.hour):02d}:{min(schedule.minute):02d}"
    return None


def _no_run(request, page: str):
    return render(
        request,
        "analytics/empty.html",
        _context(
            request,
            None,
            page,
            title=_("Analytics"),
            nightly=_nightly_time(),
            periodic_tasks_url=_admin_url("admin:django_celery_beat_periodictask_changelist"),
        ),
    )


def _series(s: Snapshot, metric: str, period: str = "month", segment: str = "all", scale: float = 1.0):
    """(label, value, complete) for every period from the metric's first to the run's last: a
    period the metric has no row for (a month without survey answers, say) is a gap, not
    left out, so the bars stand on an even time axis."""
    return [
        (_period_label(m), None if m.value is None else m.value * scale, m.complete)
        for m in _periods_filled(s, s.series(metric, period, segment), period)
    ]


def _periods_filled(s: Snapshot, values: list[MetricValue], period: str) -> list[MetricValue]:
    """`values` (of one kind of period; one per period start, the last of several) with a
    valueless MetricValue put in for each of the run's periods from the first of them on that
    has no value of its own."""
    if not values or any(m.period_start is None for m in values):
        return values
    by_start = {m.period_start: m for m in values}
    first = min(by_start)
    filled = [
        by_start.pop(p.period_start, None)
        or MetricValue(
            period=period, period_start=p.period_start, period_end=p.period_end, complete=p.complete
        )
        for p in s.periods(period)
        if p.period_start >= first
    ]
    # Periods the run's own list lacks (none expected) keep their place in time.
    return sorted([*filled, *by_start.values()], key=lambda m: m.period_start)


def _bar(s: Snapshot, title: str, metric: str, *, unit: str = "", places: int = 0, **kwargs) -> dict:
    return charts.bar_chart(_series(s, metric, **kwargs), places=places, title=title, unit=unit)


KPI_CARDS = ("crr", "rpr", "aov", "predicted_clv", "nps", "points_liability", "cac", "clv_cac")

CHART_TITLES = {
    "crr": {
        "month": gettext_lazy("Customer retention rate (CRR), % by month"),
        "quarter": gettext_lazy("Customer retention rate (CRR), % by quarter"),
        "year": gettext_lazy("Customer retention rate (CRR), % by year"),
    },
    "churn": {
        "month": gettext_lazy("Churn rate, % by month"),
        "quarter": gettext_lazy("Churn rate, % by quarter"),
        "year": gettext_lazy("Churn rate, % by year"),
    },
}


def _latest():
    run = selectors.run_latest()
    return Snapshot(run) if run else None


@dashboard_view(VIEW_DASHBOARDS)
def overview(request):
    s = _latest()
    if s is None:
        return _no_run(request, "overview")
    period = _period_param(request.GET)
    params = request.GET
    tables = {
        "key": key_figures_table(s, params),
        "retention": retention_table(s, params, period=period),
        "repeat": repeat_table(s, params),
        "windows": windows_table(s, params),
        "second": second_purchase_table(s, params),
        "active": active_table(s, params),
        "clv": clv_distribution_table(s, params),
        "top": top_customers_table(s, params),
        "fits": model_fits_table(s, params),
        "satisfaction": satisfaction_table(s, params),
        "surveys": surveys_table(s, params),
        "redemption": redemption_table(s, params),
        "acquisition": acquisition_table(s, params),
    }
    # Materialise the rows once: the template walks them, the charts reuse them.
    for t in tables.values():
        t.rows = list(t.rows)
    second = [
        (f"{r['within']} d", r["rate"] * 100 if r["rate"] is not None else None, True)
        for r in tables["second"].rows
    ]
    gaps = [
        (
            f"{r['segment']}, {r['window']} d",
            r["gap_median"],
            r["gap_p25"],
            r["gap_p75"],
            "",
        )
        for r in tables["windows"].rows
    ]
    distribution = tables["clv"].rows
    currency = s.currency
    context = _context(
        request,
        s,
        "overview",
        title=_("Analytics: key figures"),
        tables=tables,
        period=period,
        periods=list(PERIODS.items()),
        kpis=[
            (r["figure"], display(r["value"], r["_kinds"]["value"]), r["basis"])
            for r in tables["key"].rows
            if r["_key"] in KPI_CARDS
        ],
        charts={
            "crr": _bar(s, str(CHART_TITLES["crr"][period]), "crr", period=period, scale=100, unit="%"),
            "churn": _bar(s, str(CHART_TITLES["churn"][period]), "churn", period=period, scale=100, unit="%"),
            "rpr": _bar(s, _("Repeat purchase rate, % by month"), "rpr", scale=100, unit="%"),
            "frequency": _bar(s, _("Purchase days per active shopper by month"), "frequency", places=1),
            "aov": _bar(s, _("AOV by month (%(currency)s)") % {"currency": currency}, "aov", unit=currency),
            "second": charts.bar_chart(
                second, places=0, title=_("Second-purchase rate within 30, 60 and 90 days"), unit="%"
            ),
            "gaps": charts.interval_chart(
                gaps,
                places=0,
                title=_("Days between purchase days: median [25th; 75th percentile]"),
                reference=None,
            ),
            "shoppers": _bar(s, _("Active shoppers by month"), "active_customers"),
            "members": _bar(s, _("Active members by month"), "active_customers", segment="members"),
            "clv": charts.bar_chart(
                [(display(b["from"], "int"), b["customers"], True) for b in distribution],
                width=640,
                title=tables["clv"].caption + f" ({currency})",
            )
            if distribution
            else None,
            "nps": _bar(s, _("NPS by month"), "nps"),
            "csat": _bar(s, _("CSAT by month: share of satisfied answers"), "csat", unit="%"),
            "redemption": _bar(
                s,
                _("Redemption rate by month: points redeemed ÷ points issued"),
                "redemption_rate",
                scale=100,
                unit="%",
            ),
            "cac": _bar(s, _("CAC by month (%(currency)s)") % {"currency": currency}, "cac", unit=currency),
        },
        clv={
            name: {"value": value, "text": "–" if value is None else f"{display(value, 'money')} {currency}"}
            for name, value in (
                ("historical", s.value("historical_clv")),
                ("simple", s.value("simple_clv")),
                ("predicted", s.value("predicted_clv")),
            )
        },
    )
    return render(request, "analytics/overview.html", context)


@dashboard_view(VIEW_DASHBOARDS)
def cohorts(request):
    s = _latest()
    if s is None:
        return _no_run(request, "cohorts")
    kind = _cohort_kind(request.GET)
    rolling = request.GET.get("mode") == "rolling"
    rows = selectors.cohort_table(s.run, kind=kind)
    periods = max((len(r["cells"]) for r in rows), default=0)
    grid = []
    for row in rows:
        cells = []
        for cell in row["cells"]:
            value = cell.rolling_retention if rolling else cell.retention
            count = cell.active_or_later if rolling else cell.active
            cells.append(
                {
                    "k": cell.period,
                    "value": value,
                    "text": "–" if value is None else _number(value * 100, 0),
                    "count": count,
                    "bucket": charts.heat_bucket(value),
                    "complete": cell.complete,
                }
            )
        cells += [None] * (periods - len(cells))
        grid.append({"cohort": row["cohort"], "size": row["size"], "cells": cells})
    cells_table = cohort_cells_table(s, request.GET, kind=kind)
    return render(
        request,
        "analytics/cohorts.html",
        _context(
            request,
            s,
            "cohorts",
            title=_("Analytics: cohorts"),
            grid=grid,
            periods=range(periods),
            kind=kind,
            kind_label=CohortCell.Kind(kind).label,
            rolling=rolling,
            kinds=CohortCell.Kind.choices,
            csv_url=cells_table.csv_url,
            buckets=[(i, f"{i * 10}–{i * 10 + 10} %") for i in range(charts.HEAT_BUCKETS)],
        ),
    )


def _forest(title: str, effects: list[tuple[str, ProgramEffect]], naive: ProgramEffect | None = None) -> dict:
    rows = []
    if naive is not None:
        rows.append((_("Naive gap (biased)"), naive.estimate, None, None, _("biased")))
    rows += [(label, e.estimate, e.ci_low, e.ci_high, "") for label, e in effects]
    return charts.interval_chart(rows, title=title)


@dashboard_view(VIEW_DASHBOARDS)
def effect(request):
    s = _latest()
    if s is None:
        return _no_run(request, "effect")
    params = request.GET
    tables = {
        "holdout": holdout_table(s, params),
        "naive": naive_table(s, params),
        "pooled": pooled_table(s, params),
        "balance": balance_table(s, params),
        "segments": segments_table(s, params),
        "cohorts": effect_cohorts_table(s, params),
        "value": program_value_table(s, params),
    }
    for t in tables.values():
        t.rows = list(t.rows)
    naive = {e.outcome: e for e in _effects(s, ProgramEffect.Method.NAIVE)}
    forests = []
    for outcome in ("purchase_days", "spend"):
        rows = [
            (str(SEGMENT_NAMES[segment]), e)
            for segment in ("all", "light", "medium", "heavy")
            for e in _effects(s, ProgramEffect.Method.DID, pooled=True, segment=segment)
            if e.outcome == outcome
        ]
        if rows:
            rows[0] = (
                (_("All members (pooled)"), rows[0][1]) if rows[0][0] == SEGMENT_NAMES["all"] else rows[0]
            )
            forests.append(
                _forest(str(OUTCOME_NAMES[outcome]), rows, naive.get("spend") if outcome == "spend" else None)
            )
    cohort_forests = []
    for outcome in ("purchase_days", "spend"):
        rows = [
            (e.cohort.strftime("%Y-%m"), e)
            for e in sorted(_effects(s, ProgramEffect.Method.DID, pooled=False), key=lambda e: e.cohort)
            if e.outcome == outcome
        ]
        if rows:
            cohort_forests.append(
                _forest(_("%(outcome)s, by enrollment cohort") % {"outcome": OUTCOME_NAMES[outcome]}, rows)
            )
    return render(
        request,
        "analytics/effect.html",
        _context(
            request,
            s,
            "effect",
            title=_("Analytics: what the program adds"),
            tables=tables,
            forests=forests,
            cohort_forests=cohort_forests,
            months=s.run.parameters.get("effect_months", 6),
        ),
    )


@dashboard_view(VIEW_DASHBOARDS)
def customers(request):
    s = _latest()
    if s is None:
        return _no_run(request, "customers")
    filters = _score_filters(s, request.GET)
    scores = selectors.scores_search(s.run, query=filters["q"], risk=filters["risk"], order=filters["order"])
    page = Paginator(scores, PAGE_SIZE).get_page(request.GET.get("page"))
    # Each customer links to their admin page for the staff who may open it.
    t = scores_table(
        s, request.GET, rows=page.object_list, link=request.user.has_perm("accounts.view_customer")
    )
    t.rows = list(t.rows)
    keep = urlencode({k: v for k, v in filters.items() if v})
    return render(
        request,
        "analytics/customers.html",
        _context(
            request,
            s,
            "customers",
            title=_("Analytics: customers"),
            table=t,
            page_obj=page,
            filters=filters,
            keep=keep,
            risks=CustomerScore.Risk.choices,
            orders=[
                ("-predicted_clv", _("Predicted CLV, highest first")),
                ("-historical_clv", _("Historical CLV, highest first")),
                ("p_alive", _("P(alive), lowest first")),
                ("-p_alive", _("P(alive), highest first")),
                ("-expected_90", _("Expected purchase days (90 days), most first")),
                ("-rfm_score", _("RFM score, highest first")),
                ("rfm_score", _("RFM score, lowest first")),
                ("last_day", _("Last purchase, longest ago first")),
            ],
            churn_rule=s.run.parameters.get("churn_rule", "tau"),
            churn_days=s.run.parameters.get("churn_days", 90),
        ),
    )


# --- CSV ---------------------------------------------------------------------------------------

# The whole snapshot, table by table as stored (for analysts); the page tables are in TABLES.
RAW_TABLES = {
    "metrics": (
        MetricValue,
        [
            "metric",
            "period",
            "period_start",
            "period_end",
            "segment",
            "value",
            "numerator",
            "denominator",
            "complete",
            "extra",
        ],
    ),
    "cohorts": (CohortCell, ["kind", "cohort", "period", "size", "active", "active_or_later", "complete"]),
    "effects": (
        ProgramEffect,
        [
            "method",
            "outcome",
            "cohort",
            "segment",
            "estimate",
            "ci_low",
            "ci_high",
            "treated",
            "controls",
            "extra",
        ],
    ),
    "scores": (
        CustomerScore,
        [
            "customer_id",
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
            "rfm_r",
            "rfm_f",
            "rfm_m",
            "rfm_score",
            "churn_risk",
        ],
    ),
    "fits": (ModelFit, ["model", "parameters", "log_likelihood", "customers", "converged", "time_unit"]),
}


class _Echo:
    def write(self, value):
        return value


def _csv_response(rows: Iterable[list], filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@dashboard_view(EXPORT_DASHBOARDS)
def csv_download(request, table: str):
    """A table of the latest run as CSV: one of the page tables (TABLES, with the page's
    filters from the query string) or a raw snapshot table (RAW_TABLES). Streamed: the
    scores can be a million rows. Every row starts with the run's as-of date."""
    run = selectors.run_latest()
    if run is None or (table not in TABLES and table not in RAW_TABLES):
        raise Http404
    as_of = run.as_of.isoformat()
    if table in TABLES:
        t = TABLES[table](Snapshot(run), request.GET)

        def rows():
            yield ["as_of", *(c.key for c in t.columns)]
            for row in t.raw_rows():
                yield [as_of, *row]

    else:
        model, fields = RAW_TABLES[table]

        def rows():
            yield ["as_of", *fields]
            for values in (
                model.objects.filter(run=run).order_by("pk").values_list(*fields).iterator(chunk_size=5000)
            ):
                yield [as_of, *(raw(v) for v in values)]

    return _csv_response(rows(), f"analytics-{table}-{as_of}.csv")
