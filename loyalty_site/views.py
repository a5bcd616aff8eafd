import importlib
import json

from django.http import HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.decorators import customer_required
from accounts.middleware import member_customer

# Each app says what it holds about a customer (a `customer_export(customer)` function);
# the download puts them together, so a new app's data cannot be forgotten quietly.
EXPORTERS = ["accounts.services", "rewards.selectors", "campaigns.selectors", "analytics.selectors"]


def favicon(request):
    """Browsers ask for /favicon.ico whatever the page says: send them to the real one."""
    from django.templatetags.static import static

    return HttpResponsePermanentRedirect(static("img/favicon.svg"))


def home(request):
    """The public front page: what the program is and how to join. Signed-in members go
    straight to their points."""
    if request.user.is_authenticated and not request.user.is_staff and member_customer(request):
        return redirect("portal-home")
    return render(request, "home.html")


@customer_required
def my_data(request):
    """Download of everything the program holds about the signed-in member, as JSON."""
    customer = request.customer
    data = {"exported_at": timezone.now().isoformat()}
    for module_name in EXPORTERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        exporter = getattr(module, "customer_export", None)
        if exporter is not None:
            data.update(exporter(customer))
    response = HttpResponse(
        json.dumps(data, indent=2, ensure_ascii=False), content_type="application/json; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="my-data-{customer.external_ref}.json"'
    return response
