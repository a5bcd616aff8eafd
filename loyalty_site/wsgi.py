"""The site as a WSGI application (gunicorn loyalty_site.wsgi; runserver through WSGI_APPLICATION).

Two Django handlers share one process: requests under settings.API_PATH_PREFIX (the integration
API) run through settings.API_MIDDLEWARE, everything else through settings.MIDDLEWARE. Same
URLs, views and error handlers; only the middleware differs (see the settings for why).

In front of them, `PurchaseLane` answers the API's most frequent request, a plain
`POST /api/v1/purchases`, without Django's handler: see its docstring.
"""

import io
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_site.settings.production")
pages = get_wsgi_application()  # sets Django up

from django.conf import settings  # noqa: E402
from django.conf.urls.i18n import is_language_prefix_patterns_used  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest, get_script_name  # noqa: E402
from django.middleware.clickjacking import XFrameOptionsMiddleware  # noqa: E402
from django.middleware.common import CommonMiddleware  # noqa: E402
from django.middleware.locale import LocaleMiddleware  # noqa: E402
from django.middleware.security import SecurityMiddleware  # noqa: E402
from django.urls import reverse, set_script_prefix, set_urlconf  # noqa: E402
from django.utils import translation  # noqa: E402

from loyalty_site.middleware import ApiContentSecurityPolicyMiddleware  # noqa: E402
from rewards import api_fast  # noqa: E402


class ApiHandler(WSGIHandler):
    """A Django WSGI handler built from settings.API_MIDDLEWARE."""

    def load_middleware(self, is_async=False):
        # Django builds a handler's chain from settings.MIDDLEWARE; this handler's is the API's.
        # Swapped only while the chain is built, once, before the server takes any request.
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


def _chain_not_used(request):
    raise AssertionError("PurchaseLane calls its middlewares' hooks, never their chain")


class PurchaseLane:
    """`POST /api/v1/purchases` in the plain case, without Django's handler.

    A point of sale's purchases are most of the API's traffic, and for them Django's handler
    (the middleware chain and its exception wrappers, URL resolution, the view's dispatch) are
    work the answer does not need: without them a purchase costs 3-8 % fewer instructions in
    process (bench/RESULTS.md, fifth round). This lane does
    for that one request what the API's stack (settings.API_MIDDLEWARE) would do, with the
    middlewares' own hooks where they decide something:

    - the request_started signal (Django's per-request connection handling) and, through the
      response's close(), request_finished, as the handler sends them;
    - SecurityMiddleware's and CommonMiddleware's request checks: a redirect to HTTPS, a host
      not in ALLOWED_HOSTS, a refused user agent go to the full stack, which answers them;
    - the language from the request (cookie, Accept-Language), as LocaleMiddleware picks it
      when no URL carries a language prefix;
    - rewards.api_fast.purchase_answer, the same function the view calls first;
    - the response hooks of XFrameOptions-, Common-, Locale- and SecurityMiddleware and the
      API's Content-Security-Policy headers, in the stack's order.

    Anything else — another method, a body the plain path does not take, an error — goes to
    the API's handler with the body as received, marked so that the view does not try the
    plain path a second time. An error after the purchase was recorded (in a response hook)
    is answered by the full stack as the purchase's replay: idempotent, never recorded twice.
    The lane serves only while settings.API_MIDDLEWARE is the stack
    it restates (MIDDLEWARE_RESTATED) and no URL uses i18n_patterns; tests/site/test_api_lane.py
    holds its answers, headers included, equal to the full stack's.
    """

    MIDDLEWARE_RESTATED = [
        "django.middleware.security.SecurityMiddleware",
        "loyalty_site.middleware.ApiContentSecurityPolicyMiddleware",
        "loyalty_site.outages.DatabaseUnavailableMiddleware",
        "django.middleware.locale.LocaleMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]

    def __init__(self, api: WSGIHandler, path: str):
        self.api, self.path = api, path
        # Only their hooks are called: the lane is the rest of the chain.
        self.security = SecurityMiddleware(_chain_not_used)
        self.csp = ApiContentSecurityPolicyMiddleware(_chain_not_used)
        self.locale = LocaleMiddleware(_chain_not_used)
        self.common = CommonMiddleware(_chain_not_used)
        self.xframe = XFrameOptionsMiddleware(_chain_not_used)

    def serves(self) -> bool:
        return (
            settings.API_MIDDLEWARE == self.MIDDLEWARE_RESTATED
            and not is_language_prefix_patterns_used(settings.ROOT_URLCONF)[0]
            and not settings.DATABASES["default"].get("ATOMIC_REQUESTS")
        )

    def __call__(self, environ, start_response):
        set_script_prefix(get_script_name(environ))
        signals.request_started.send(sender=WSGIHandler, environ=environ)
        set_urlconf(settings.ROOT_URLCONF)
        request = WSGIRequest(environ)
        try:
            response = self.answer(request)
        except Exception:  # noqa: BLE001 - the full stack answers it, in the API's shape
            response = None
        if response is None:
            return self.full(environ, request, start_response)
        response._resource_closers.append(request.close)
        response._handler_class = WSGIHandler
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        return response

    def answer(self, request):
        if self.security.process_request(request) is not None or self.common.process_request(request):
            return None
        translation.activate(translation.get_language_from_request(request))
        request.LANGUAGE_CODE = translation.get_language()
        response = api_fast.purchase_answer(request)
        if response is None:
            return None
        response = self.xframe.process_response(request, response)
        response = self.common.process_response(request, response)
        response = self.locale.process_response(request, response)
        for name, policy in self.csp.headers:
            if name not in response:
                response[name] = policy
        return self.security.process_response(request, response)

    def full(self, environ, request, start_response):
        if hasattr(request, "_body"):  # read by the plain path: the full stack reads it again
            environ["wsgi.input"] = io.BytesIO(request._body)
        environ[api_fast.LANE_TRIED] = True
        return self.api(environ, start_response)


class SiteApplication:
    def __init__(self, pages: WSGIHandler, api: WSGIHandler, api_prefix: str):
        self.pages, self.api, self.api_prefix = pages, api, api_prefix
        self.purchases = PurchaseLane(api, reverse("api-purchase-create"))
        self.purchase_path = self.purchases.path if self.purchases.serves() else None

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == self.purchase_path and environ.get("REQUEST_METHOD") == "POST":
            return self.purchases(environ, start_response)
        if path.startswith(self.api_prefix):
            return self.api(environ, start_response)
        return self.pages(environ, start_response)


application = SiteApplication(pages, ApiHandler(), settings.API_PATH_PREFIX)
