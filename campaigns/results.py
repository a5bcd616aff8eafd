"""A campaign's results: what was sent, what came of it, and the lift over the holdout.

Treated and holdout customers are compared from the same moment — when each was drawn
into the campaign's audience — over the attribution window, so the comparison is an
honest intent-to-treat estimate: suppressed or unopened messages count as treated.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db.models import (
    Count,
    DateTimeField,
    DecimalField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce
from django.utils.translation import gettext as _

from analytics.stats import Interval, difference_of_means, difference_of_proportions
from rewards.models import Purchase, Redemption

from .models import Audience, Campaign, Click, Delivery, Unsubscribe

__all__ = ["Interval", "campaign_results", "difference_of_means", "difference_of_proportions"]


def _outcomes(campaign: Campaign):
    """Per audience member: converted (a purchase in the window) and revenue in the window."""
    window = dt.timedelta(days=campaign.attribution_days)
    purchases = Purchase.objects.filter(
        customer_id=OuterRef("customer_id"),
        occurred_at__gte=OuterRef("assigned_at"),
        occurred_at__lt=OuterRef("window_end"),
    )
    revenue = (
        purchases.values("customer_id")
        .annotate(total=Sum(F("amount") - F("refunded_amount")))
        .values("total")
    )
    return (
        Audience.objects.filter(campaign=campaign)
        .annotate(window_end=ExpressionWrapper(F("assigned_at") + window, output_field=DateTimeField()))
        .annotate(
            converted=Exists(purchases),
            revenue=Coalesce(
                Subquery(revenue), Decimal("0"), output_field=DecimalField(max_digits=14, decimal_places=2)
            ),
        )
        .values_list("holdout", "converted", "revenue")
    )


def campaign_results(campaign: Campaign) -> dict:
    deliveries = Delivery.objects.filter(campaign=campaign)
    by_status = dict(deliveries.values("status").annotate(n=Count("id")).values_list("status", "n"))
    groups = {True: [], False: []}
    conversions = {True: 0, False: 0}
    for holdout, converted, revenue in _outcomes(campaign):
        groups[holdout].append(float(revenue))
        conversions[holdout] += bool(converted)
    treated, holdout = len(groups[False]), len(groups[True])
    rate = {k: (conversions[k] / len(v) if v else None) for k, v in groups.items()}
    revenue_per = {k: (sum(v) / len(v) if v else None) for k, v in groups.items()}
    conversion_lift = difference_of_proportions(conversions[False], treated, conversions[True], holdout)
    revenue_lift = difference_of_means(groups[False], groups[True])
    offer_redemptions = Redemption.objects.filter(
        idempotency_key__startswith=f"campaign:{campaign.pk}:", state=Redemption.State.USED
    ).count()
    return {
        "recipients": treated,
        "holdout": holdout,
        "sent": by_status.get(Delivery.Status.SENT, 0),
        "failed": by_status.get(Delivery.Status.FAILED, 0),
        "suppressed": by_status.get(Delivery.Status.SUPPRESSED, 0),
        "pending": by_status.get(Delivery.Status.PENDING, 0) + by_status.get(Delivery.Status.SENDING, 0),
        "unsubscribed": Unsubscribe.objects.filter(delivery__campaign=campaign).count(),
        "clicks": Click.objects.filter(delivery__campaign=campaign).values("delivery").distinct().count(),
        "conversions": conversions[False],
        "conversion_rate": rate[False],
        "holdout_conversion_rate": rate[True],
        "revenue_per_recipient": revenue_per[False],
        "holdout_revenue_per_recipient": revenue_per[True],
        "offer_redemptions": offer_redemptions,
        "conversion_lift": conversion_lift,
        "conversion_lift_words": conversion_lift
        and Interval(
            conversion_lift.estimate * 100, conversion_lift.low * 100, conversion_lift.high * 100
        ).words(_("percentage points")),
        "revenue_lift": revenue_lift,
        "revenue_lift_words": revenue_lift and revenue_lift.words(_("per recipient")),
    }
