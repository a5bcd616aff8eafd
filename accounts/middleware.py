"""A signed-in member's own language and time zone."""

import zoneinfo

from django.utils import timezone, translation


class MemberPreferencesMiddleware:
    """After authentication: a member's profile language wins over the browser's
    Accept-Language (LocaleMiddleware's choice), and dates show in their time zone."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        customer = member_customer(request)
        if customer is not None:
            translation.activate(customer.language)
            request.LANGUAGE_CODE = translation.get_language()
            try:
                timezone.activate(zoneinfo.ZoneInfo(customer.time_zone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.deactivate()
        response = self.get_response(request)
        if customer is not None:
            timezone.deactivate()
        return response


def member_customer(request):
    """The Customer linked to the signed-in login, or None (anonymous, staff, not yet linked)."""
    if hasattr(request, "_member_customer"):
        return request._member_customer
    customer = None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        from .models import Customer

        customer = Customer.objects.filter(user_id=user.pk).first()
    request._member_customer = customer
    return customer
