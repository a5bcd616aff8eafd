"""The site as a WSGI application (gunicorn loyalty_site.wsgi; runserver through WSGI_APPLICATION).

Two Django handlers share one process: requests under settings.API_PATH_PREFIX (the integration
API) run through settings.API_MIDDLEWARE, everything else through settings.MIDDLEWARE. Same
URLs, views and error handlers; only the middleware differs (see the settings for why).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_site.settings.production")
pages = get_wsgi_application()  # sets Django up

from django.conf import settings  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402


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


class SiteApplication:
    def __init__(self, pages: WSGIHandler, api: WSGIHandler, api_prefix: str):
        self.pages, self.api, self.api_prefix = pages, api, api_prefix

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(self.api_prefix):
            return self.api(environ, start_response)
        return self.pages(environ, start_response)


application = SiteApplication(pages, ApiHandler(), settings.API_PATH_PREFIX)
