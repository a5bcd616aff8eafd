from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect

from .middleware import member_customer


def customer_required(view):
    """Signed in and linked to a customer (else: the login page, or the page that says
    the card is waiting for its email confirmation). Puts the customer on request.customer."""

    @wraps(view)
    @login_required
    def wrapped(request, *args, **kwargs):
        customer = member_customer(request)
        if customer is None:
            return redirect("portal-pending")
        request.customer = customer
        return view(request, *args, **kwargs)

    return wrapped
