"""Segments compiled to SQL: each condition is a Q over Customer, built from set-based
subqueries (GROUP BY … HAVING on purchases), so counting a million customers is one query."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db.models import Count, Max, Q, QuerySet, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import Customer
from analytics.models import CustomerScore
from rewards.models import PointsAccount, Purchase, PurchaseLine, Redemption, Tier

from .models import SegmentCondition

Field = SegmentCondition.Field
Op = SegmentCondition.Operator

# What each condition takes: its operators, whether a value and a window in days are needed.
SPEC = {
    Field.TIER: {"ops": {Op.IS}, "value": "list"},
    Field.MEMBER: {"ops": {Op.IS}, "value": None},
    Field.ENROLLED_WITHIN: {"ops": {Op.IS}, "value": None, "days": True},
    Field.DAYS_SINCE_PURCHASE: {"ops": {Op.GTE, Op.LTE}, "value": "int"},
    Field.PURCHASES: {"ops": {Op.GTE, Op.LTE}, "value": "int", "days": True},
    Field.SPEND: {"ops": {Op.GTE, Op.LTE}, "value": "decimal", "days": True},
    Field.CATEGORY: {"ops": {Op.IS}, "value": "list", "days": "optional"},
    Field.REDEEMED: {"ops": {Op.IS}, "value": None, "days": "optional"},
    Field.BIRTHDAY_MONTH: {"ops": {Op.IS}, "value": "months"},
    Field.LANGUAGE: {"ops": {Op.IS}, "value": "languages"},
    Field.CONSENT: {"ops": {Op.IS}, "value": None},
    Field.RFM: {"ops": {Op.GTE, Op.LTE}, "value": "decimal"},
    Field.CLV: {"ops": {Op.GTE, Op.LTE}, "value": "decimal"},
    Field.P_ALIVE: {"ops": {Op.GTE, Op.LTE}, "value": "decimal"},
    Field.CHURN_RISK: {"ops": {Op.IS}, "value": "risks"},
    Field.EXPECTED_30: {"ops": {Op.GTE, Op.LTE}, "value": "decimal"},
    Field.EXPECTED_90: {"ops": {Op.GTE, Op.LTE}, "value": "decimal"},
    Field.EXPECTED_365: {"ops": {Op.GTE, Op.LTE}, "value": "decimal"},
}
# Conditions on analytics' latest per-customer scores (analytics.models.CustomerScore), by column.
# Expected purchases are expected purchase days (METRICS.md: several receipts of one visit are
# one purchase), as the analytics pages show them.
ANALYTICS_FIELDS = {
    Field.RFM: "rfm_score",
    Field.CLV: "predicted_clv",
    Field.P_ALIVE: "p_alive",
    Field.CHURN_RISK: "churn_risk",
    Field.EXPECTED_30: "expected_30",
    Field.EXPECTED_90: "expected_90",
    Field.EXPECTED_365: "expected_365",
}
# The churn-risk labels analytics stores, typed as codes whatever the staff member's language,
# as tier and language codes are.
RISKS = tuple(CustomerScore.Risk.values)


class ConditionError(ValueError):
    pass


@dataclass
class Condition:
    field: str
    operator: str = Op.IS
    value: str = ""
    days: int | None = None
    negate: bool = False
    group: int = 1

    @classmethod
    def of(cls, row: SegmentCondition) -> Condition:
        return cls(row.field, row.operator, row.value, row.days, row.negate, row.group)


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def condition_check(c: Condition) -> None:
    """Raise ConditionError with a message for staff when the condition is incomplete."""
    spec = SPEC.get(c.field)
    if spec is None:
        raise ConditionError(_("Unknown condition."))
    if c.operator not in spec["ops"]:
        raise ConditionError(
            _("This condition takes: %(ops)s.") % {"ops": ", ".join(str(Op(o).label) for o in spec["ops"])}
        )
    if spec.get("days") is True and not c.days:
        raise ConditionError(_("Give the number of days."))
    kind = spec["value"]
    if kind is None:
        return
    if not c.value.strip():
        raise ConditionError(_("Give a value."))
    if kind == "int":
        if not c.value.strip().isdigit():
            raise ConditionError(_("Give a whole number."))
    elif kind == "decimal":
        try:
            Decimal(c.value.strip())
        except InvalidOperation as exc:
            raise ConditionError(_("Give a number.")) from exc
    elif kind == "months":
        if not all(v.isdigit() and 1 <= int(v) <= 12 for v in _list(c.value)):
            raise ConditionError(_("Months are numbers from 1 to 12, comma-separated."))
    elif kind == "languages":
        codes = dict(settings.LANGUAGES)
        if not all(v in codes for v in _list(c.value)):
            raise ConditionError(_("Languages are codes: %(codes)s.") % {"codes": ", ".join(codes)})
    elif kind == "risks":
        if not all(v in RISKS for v in _list(c.value)):
            # Each code with its name in the staff member's language, as the analytics pages show it.
            names = {code: str(name) for code, name in CustomerScore.Risk.choices}
            codes = ", ".join(code if names[code] == code else f"{code} ({names[code]})" for code in RISKS)
            raise ConditionError(_("Churn-risk labels are codes: %(codes)s.") % {"codes": codes})
    elif kind == "list" and c.field == Field.TIER:
        known = set(Tier.objects.values_list("code", flat=True))
        unknown = [v for v in _list(c.value) if v not in known]
        if unknown:
            raise ConditionError(_("Unknown tier codes: %(codes)s.") % {"codes": ", ".join(unknown)})


def _since(days: int | None, now: dt.datetime) -> dt.datetime | None:
    return now - dt.timedelta(days=days) if days else None


def _purchases(since):
    purchases = Purchase.objects.all()
    return purchases.filter(occurred_at__gte=since) if since else purchases


def condition_q(c: Condition, *, now: dt.datetime) -> Q:  # noqa: C901 - one branch per condition
    condition_check(c)
    since = _since(c.days, now)
    value = c.value.strip()
    field = c.field
    if field == Field.TIER:
        q = Q(pk__in=PointsAccount.objects.filter(tier__code__in=_list(value)).values("pk"))
    elif field == Field.MEMBER:
        q = Q(enrolled_at__isnull=False)
    elif field == Field.ENROLLED_WITHIN:
        q = Q(enrolled_at__gte=since)
    elif field == Field.DAYS_SINCE_PURCHASE:
        cutoff = now - dt.timedelta(days=int(value))
        last = Purchase.objects.values("customer_id").annotate(last=Max("occurred_at"))
        last = last.filter(last__lte=cutoff) if c.operator == Op.GTE else last.filter(last__gte=cutoff)
        q = Q(pk__in=last.values("customer_id"))
    elif field in (Field.PURCHASES, Field.SPEND):
        per_customer = _purchases(since).values("customer_id")
        if field == Field.PURCHASES:
            measure, threshold = Count("id"), int(value)
        else:
            measure, threshold = Sum("amount") - Sum("refunded_amount"), Decimal(value)
        per_customer = per_customer.annotate(m=measure)
        if c.operator == Op.GTE:
            q = (
                Q(pk__in=per_customer.filter(m__gte=threshold).values("customer_id"))
                if threshold > 0
                else Q()
            )
        else:
            # "≤ N" includes those with none at all: not among those above N.
            q = ~Q(pk__in=per_customer.filter(m__gt=threshold).values("customer_id"))
    elif field == Field.CATEGORY:
        lines = PurchaseLine.objects.filter(category__in=_list(value))
        if since:
            lines = lines.filter(purchase__occurred_at__gte=since)
        q = Q(pk__in=lines.values("purchase__customer_id"))
    elif field == Field.REDEEMED:
        redemptions = Redemption.objects.exclude(state=Redemption.State.CANCELLED)
        if since:
            redemptions = redemptions.filter(created_at__gte=since)
        q = Q(pk__in=redemptions.values("customer_id"))
    elif field == Field.BIRTHDAY_MONTH:
        q = Q(birthday__month__in=[int(v) for v in _list(value)])
    elif field == Field.LANGUAGE:
        q = Q(language__in=_list(value))
    elif field == Field.CONSENT:
        q = Q(marketing_consent=True)
    else:
        q = _analytics_q(field, c.operator, value)
    return ~q if c.negate else q


def _analytics_q(field: str, operator: str, value: str) -> Q:
    """Conditions on what analytics predicted per customer (its latest scores). A customer
    without a prediction (no model fitted, or no score yet) matches no threshold, and so
    matches its NOT."""
    try:
        from analytics.selectors import customer_scores_latest
    except ImportError as exc:
        raise ConditionError(_("Analytics has not computed customer scores yet.")) from exc
    scores = customer_scores_latest()
    if scores is None:
        raise ConditionError(_("Analytics has not computed customer scores yet."))
    column = ANALYTICS_FIELDS[field]
    if operator == Op.IS:
        lookup, threshold = f"{column}__in", _list(value)
    else:
        lookup, threshold = f"{column}__{operator}", Decimal(value)
    return Q(pk__in=scores.filter(**{lookup: threshold}).values("customer_id"))


def segment_q(conditions: list[Condition], *, now: dt.datetime | None = None) -> Q:
    """OR over groups of AND-ed conditions. No conditions: everyone."""
    now = now or timezone.now()
    groups: dict[int, Q] = {}
    for c in conditions:
        q = condition_q(c, now=now)
        groups[c.group] = groups[c.group] & q if c.group in groups else q
    result = Q()
    for i, q in enumerate(groups.values()):
        result = q if i == 0 else result | q
    return result


def segment_customers(segment, *, now: dt.datetime | None = None) -> QuerySet[Customer]:
    conditions = [Condition.of(row) for row in segment.conditions.all()]
    return Customer.objects.filter(segment_q(conditions, now=now))


def segment_preview(conditions: list[Condition], *, sample: int = 10) -> dict:
    """The live count and a sample, for the editor."""
    customers = Customer.objects.filter(segment_q(conditions))
    return {
        "count": customers.count(),
        "sample": [
            {"id": c.pk, "ref": c.external_ref, "name": c.display_name, "email": c.email}
            for c in customers.order_by("-pk")[:sample]
        ],
    }
