"""Middleware of the integration API's stack (settings.API_MIDDLEWARE)."""

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.utils import build_policy


class ApiContentSecurityPolicyMiddleware:
    """The site's Content-Security-Policy on the API's answers, built once.

    django-csp's middleware builds the policy on every response, because a page may carry a nonce
    or a per-view policy; the API's JSON answers never do, so the header is the same string
    every time (tests/site/test_api_lane.py compares it with the full stack's). The API's path is
    not among the settings' EXCLUDE_URL_PREFIXES (the docs page is, and is not in the API's lane).
    """

    def __init__(self, get_response):
        self.get_response = get_response
        policies = {HEADER: build_policy(), HEADER_REPORT_ONLY: build_policy(report_only=True)}
        self.headers = [(name, policy) for name, policy in policies.items() if policy]

    def __call__(self, request):
        response = self.get_response(request)
        for name, policy in self.headers:
            if name not in response:
                response[name] = policy
        return response
