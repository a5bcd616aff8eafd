"""When PostgreSQL does not answer: a calm 503 with Retry-After instead of a 500.

The API's views answer through their exception handler (rewards.api_errors), in the API's
error shape. This module covers the rest: a page or API request whose database error escapes
a view (the middleware), or happens in another middleware before any view runs, such as
loading the session of a signed-in member (handler500, which Django calls with the exception
still in sys.exc_info()).

The page is rendered without context processors or the base layout, both of which read the
database, so the answer itself cannot fail the same way.
"""

import logging
import sys

from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views.defaults import server_error as django_server_error

from rewards.api_errors import DATABASE_RETRY_AFTER_SECONDS, database_unavailable, database_unavailable_body

logger = logging.getLogger(__name__)


def unavailable_response(request) -> HttpResponse:
    if request.path.startswith("/api/"):
        response = JsonResponse(database_unavailable_body(), status=503)
    else:
        response = HttpResponse(
            render_to_string("loyalty_site/unavailable.html", {"retry_after": DATABASE_RETRY_AFTER_SECONDS}),
            status=503,
        )
    response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    # Never cached by a proxy: the next request may well succeed.
    response["Cache-Control"] = "no-store"
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not database_unavailable(exception):
            return None
        logger.warning("%s answered 503: the database is unavailable (%s)", request.path, exception)
        return unavailable_response(request)


def server_error(request):
    """handler500: the calm 503 when the uncaught error was the database going away."""
    if database_unavailable(sys.exc_info()[1]):
        return unavailable_response(request)
    return django_server_error(request)
