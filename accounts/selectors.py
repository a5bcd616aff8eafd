"""Reads about people: customers and what staff did to them."""

from __future__ import annotations

import datetime as dt

from django.contrib.contenttypes.models import ContentType
from django.db.models import Count, Q

from .models import AuditEntry, Customer


def customer_get(*, customer_id: int) -> Customer | None:
    """A customer with their portal login and referrer (one query), or None."""
    return Customer.objects.select_related("user", "referred_by").filter(pk=customer_id).first()


def audit_entries_for_customer(*, customer_id: int, limit: int = 20) -> list[AuditEntry]:
    """The newest staff actions on one customer (adjustments, enrolment, resent confirmations)."""
    content_type = ContentType.objects.get_for_model(Customer)  # cached by Django after the first call
    return list(
        AuditEntry.objects.filter(content_type=content_type, object_id=str(customer_id)).order_by(
            "-at", "-pk"
        )[:limit]
    )


def member_counts(*, weeks: list[tuple[dt.datetime, dt.datetime]]) -> dict:
    """Members now, and members who joined in each [start, end) of `weeks`: one query."""
    aggregates = {"members": Count("pk", filter=Q(enrolled_at__isnull=False))}
    for i, (start, end) in enumerate(weeks):
        aggregates[f"w{i}"] = Count("pk", filter=Q(enrolled_at__gte=start, enrolled_at__lt=end))
    row = Customer.objects.aggregate(**aggregates)
    return {"members": row["members"], "joined": [row[f"w{i}"] for i in range(len(weeks))]}
