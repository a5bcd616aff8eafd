from django.conf import settings


def program(request):
    """Program-wide values every template may show."""
    return {
        "PROGRAM_NAME": settings.PROGRAM_NAME,
        "PROGRAM_CURRENCY": settings.PROGRAM_CURRENCY,
    }


def member(request):
    """The signed-in member (for the header's navigation) and their unread messages."""
    from accounts.middleware import member_customer

    customer = member_customer(request) if hasattr(request, "user") else None
    if customer is None:
        return {"member": None}
    from campaigns.selectors import inbox_unread_count

    return {"member": customer, "inbox_unread": inbox_unread_count(customer_id=customer.pk)}
