"""The site's WSGI application (what gunicorn serves) answers the integration API through its own
middleware stack (settings.API_MIDDLEWARE, loyalty_site/wsgi.py) and everything else through the
full one. The API answers exactly as through the full stack, with the same security headers,
and sets no cookie."""

import io
import json
import sys

import pytest
from django.test import Client
from django.utils import timezone

from loyalty_site.wsgi import application
from rewards.services import integration_token_create
from tests.site.test_security_headers import assert_secure_headers

pytestmark = pytest.mark.django_db(transaction=True)  # a WSGI request closes its connection


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes):
        self.status_code = int(status.split()[0])
        self.headers = dict(headers)
        self.header_list = headers
        self.content = body

    def json(self):
        return json.loads(self.content)


def wsgi(method: str, path: str, *, body: bytes = b"", **headers) -> Answer:
    """One request through loyalty_site.wsgi.application, as gunicorn would send it."""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json" if body else "",
        **{"HTTP_" + name.upper(): value for name, value in headers.items()},
    }
    started = {}

    def start_response(status, response_headers, exc_info=None):
        started["status"], started["headers"] = status, response_headers

    chunks = application(environ, start_response)
    try:
        content = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return Answer(started["status"], started["headers"], content)


@pytest.fixture
def token(program):
    return integration_token_create(name="lane")[1]


def test_the_api_runs_through_its_own_middleware_and_the_pages_through_the_full_stack():
    from django.conf import settings

    def chain(handler) -> list[str]:
        names, layer = [], handler._middleware_chain
        while layer is not None:
            middleware = getattr(layer, "__self__", None) or getattr(layer, "__wrapped__", None)
            if middleware is None:  # convert_exception_to_response's wrapper
                layer = getattr(layer, "__closure__", None) and layer.__closure__[0].cell_contents
                continue
            if not hasattr(middleware, "get_response"):
                break
            names.append(f"{type(middleware).__module__}.{type(middleware).__name__}")
            layer = middleware.get_response
        return names

    assert chain(application.api) == settings.API_MIDDLEWARE
    assert chain(application.pages) == settings.MIDDLEWARE


def test_api_answers_are_the_same_as_through_the_full_stack(token):
    client = Client()
    auth = f"Bearer {token}"
    purchase = json.dumps(
        {
            "external_id": "lane-1",
            "customer": "L1",
            "amount": "12.50",
            "currency": "DKK",
            "occurred_at": timezone.now().isoformat(),
            "enroll": True,
        }
    ).encode()
    requests = [
        ("GET", "/api/v1/rewards", b"", {"authorization": auth}),
        ("GET", "/api/v1/rewards", b"", {}),  # 401
        ("GET", "/api/v1/rewards", b"", {"authorization": "Bearer wrong", "accept_language": "da"}),
        ("GET", "/api/v1/no-such-thing", b"", {"authorization": auth}),  # JSON 404
        ("POST", "/api/v1/purchases", b"{not json", {"authorization": auth}),  # 400
        ("POST", "/api/v1/purchases", b'{"amount": "-1"}', {"authorization": auth, "accept_language": "sv"}),
        ("GET", "/api/v1/customers/nobody", b"", {"authorization": auth}),  # 404
    ]
    for method, path, body, headers in requests:
        lane = wsgi(method, path, body=body, **headers)
        full = client.generic(
            method,
            path,
            body,
            content_type="application/json",
            **{"HTTP_" + name.upper(): value for name, value in headers.items()},
        )
        assert (lane.status_code, lane.json()) == (full.status_code, full.json()), (method, path)
        assert_secure_headers(lane)
        assert lane.headers["Content-Security-Policy"] == full["Content-Security-Policy"]
        assert not any(name.lower() == "set-cookie" for name, _ in lane.header_list), path

    # A write goes through once: the same purchase through both stacks is one purchase.
    first = wsgi("POST", "/api/v1/purchases", body=purchase, authorization=auth)
    again = client.post(
        "/api/v1/purchases", purchase, content_type="application/json", HTTP_AUTHORIZATION=auth
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()


def test_pages_still_run_through_the_full_stack(db):
    page = wsgi("GET", "/account/login/")
    assert page.status_code == 200
    assert_secure_headers(page)
    assert any(name.lower() == "set-cookie" and "csrftoken" in value for name, value in page.header_list)
    # The API's documentation is a page, not part of the integration API's lane.
    assert wsgi("GET", "/api/docs/").status_code == 200
