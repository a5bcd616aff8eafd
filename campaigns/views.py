"""The member's inbox of in-app messages."""

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import csrf_exempt

from accounts.decorators import customer_required

from .models import InboxMessage
from .selectors import inbox_list
from .services import inbox_message_read


@customer_required
def inbox(request):
    from analytics.selectors import surveys_open_for

    page = Paginator(inbox_list(customer_id=request.customer.pk), 20).get_page(request.GET.get("page"))
    return render(
        request, "campaigns/inbox.html", {"page": page, "surveys": surveys_open_for(request.customer)}
    )


@customer_required
def inbox_message(request, message_id):
    message = get_object_or_404(InboxMessage, pk=message_id, customer=request.customer)
    inbox_message_read(message=message)
    return render(request, "campaigns/inbox_message.html", {"message": message})


# --- Links in messages: tracked clicks, one-click unsubscribe -------------------------------


def click(request, signed):
    """A tracked link: record the click, then go where the link pointed."""
    from django.core import signing
    from django.http import Http404, HttpResponseRedirect

    from .models import Click, Delivery
    from .rendering import click_target

    try:
        token, url = click_target(signed)
    except signing.BadSignature as exc:
        raise Http404 from exc
    delivery = Delivery.objects.filter(token=token).first()
    if delivery is None or not url.startswith(("https://", "http://")):
        raise Http404
    Click.objects.create(delivery=delivery, url=url[:500])
    return HttpResponseRedirect(url)


@csrf_exempt  # RFC 8058 one-click: mail clients POST here without a session; the token is the key.
def unsubscribe(request, token):
    from accounts.services import customer_consent_set

    from .models import Delivery, Unsubscribe

    delivery = get_object_or_404(Delivery.objects.select_related("customer"), token=token)
    if request.method == "POST":
        customer_consent_set(customer=delivery.customer, consent=False)
        Unsubscribe.objects.get_or_create(delivery=delivery)
        return render(request, "campaigns/unsubscribed.html", {"customer": delivery.customer})
    return render(request, "campaigns/unsubscribe.html", {"delivery": delivery})
