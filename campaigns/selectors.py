from django.db.models import QuerySet

from .models import InboxMessage


def inbox_list(*, customer_id: int) -> QuerySet[InboxMessage]:
    return InboxMessage.objects.filter(customer_id=customer_id)


def inbox_unread_count(*, customer_id: int) -> int:
    return InboxMessage.objects.filter(customer_id=customer_id, read_at__isnull=True).count()


def customer_export(customer) -> dict:
    return {
        "inbox": [
            {
                "subject": m.subject,
                "body": m.body,
                "sent_at": m.created_at.isoformat(),
                "read_at": m.read_at.isoformat() if m.read_at else None,
            }
            for m in inbox_list(customer_id=customer.pk).order_by("created_at")
        ]
    }


# --- The staff panel --------------------------------------------------------------------------


def deliveries_of(*, customer_id: int, limit: int = 30) -> list:
    """A customer's newest campaign messages with their results: clicks, unsubscribed, read
    (in-app), and converted (a purchase within the campaign's attribution window after the
    message was sent). Three queries whatever the history."""
    import datetime as dt

    from django.db.models import Count, Exists, OuterRef

    from rewards.models import Purchase

    from .models import Delivery, Unsubscribe

    deliveries = list(
        Delivery.objects.filter(customer_id=customer_id)
        .select_related("campaign", "inbox_message")
        .annotate(
            click_count=Count("clicks"),
            unsubscribed=Exists(Unsubscribe.objects.filter(delivery=OuterRef("pk"))),
        )
        .order_by("-created_at", "-id")[:limit]
    )
    sent = [d.sent_at for d in deliveries if d.sent_at]
    days = (
        list(
            Purchase.objects.filter(customer_id=customer_id, occurred_at__gte=min(sent))
            .order_by("occurred_at")
            .values_list("occurred_at", flat=True)
        )
        if sent
        else []
    )
    for d in deliveries:
        try:
            d.inbox = d.inbox_message
        except Delivery.inbox_message.RelatedObjectDoesNotExist:
            d.inbox = None
        if d.sent_at is None:
            d.converted = None
            continue
        end = d.sent_at + dt.timedelta(days=d.campaign.attribution_days)
        d.converted = any(d.sent_at <= at < end for at in days)
    return deliveries


def inbox_from_staff(*, customer_id: int, limit: int = 20) -> list[InboxMessage]:
    """In-app messages not sent by a campaign (written by staff)."""
    return list(InboxMessage.objects.filter(customer_id=customer_id, delivery__isnull=True)[:limit])


def deliveries_failed(*, since) -> dict:
    """Deliveries that failed since `since` (by their last attempt), with the newest reason."""
    from django.db.models import Q

    from .models import Delivery

    failed = Delivery.objects.filter(status=Delivery.Status.FAILED).filter(
        Q(claimed_at__gte=since) | Q(claimed_at__isnull=True, created_at__gte=since)
    )
    return {"count": failed.count(), "latest": failed.order_by("-claimed_at", "-id").first()}
