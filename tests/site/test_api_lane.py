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


# --- The plain purchase's lane (loyalty_site.wsgi.PurchaseLane) --------------------------------


def _purchase(external_id: str, customer: str, **extra) -> bytes:
    body = {
        "external_id": external_id,
        "customer": customer,
        "amount": "120.00",
        "currency": "DKK",
        "occurred_at": timezone.now().isoformat(),
        "items": [{"sku": "ESP-1", "category": "coffee", "quantity": "2", "amount": "120.00"}],
        "enroll": True,
        **extra,
    }
    return json.dumps(body).encode()


def _full_stack(monkeypatch) -> list[str]:
    """Count the requests that reach the API's Django handler behind the lane."""
    reached = []
    handler = application.api

    def counted(environ, start_response):
        reached.append(environ["PATH_INFO"])
        return handler(environ, start_response)

    monkeypatch.setattr(application.purchases, "api", counted)
    monkeypatch.setattr(application, "api", counted)
    return reached


def _through_api_handler(method, path, *, body=b"", **headers) -> Answer:
    """The same request through the API's Django handler alone (what answered before the lane)."""
    saved, application.purchase_path = application.purchase_path, None
    try:
        return wsgi(method, path, body=body, **headers)
    finally:
        application.purchase_path = saved


def test_the_lane_serves_exactly_the_plain_purchase_and_knows_the_apis_stack():
    from django.conf import settings

    assert application.purchase_path == "/api/v1/purchases"
    # The lane restates the API's middleware stack; a change to it must change the lane too.
    assert settings.API_MIDDLEWARE == application.purchases.MIDDLEWARE_RESTATED
    assert application.purchases.serves()


def test_a_lane_whose_stack_is_not_the_apis_does_not_serve(settings):
    from loyalty_site.wsgi import PurchaseLane

    settings.API_MIDDLEWARE = [*settings.API_MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    assert not PurchaseLane(application.api, "/api/v1/purchases").serves()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"accept_language": "da"},
        {"accept_language": "th-TH,th;q=0.9,en;q=0.5"},
        {"accept_language": "ru", "cookie": "django_language=sv"},
        {"accept_language": "fr"},  # not one of the site's: the default language
        {"x_forwarded_proto": "https", "accept_language": "sv"},  # HSTS on a secure request
        {"accept": "application/json"},
    ],
)
def test_the_lane_answers_a_purchase_as_the_full_stack_does(token, monkeypatch, headers):
    auth = f"Bearer {token}"
    reached = _full_stack(monkeypatch)
    body = _purchase("lane-a", "LA")
    lane = wsgi("POST", "/api/v1/purchases", body=body, authorization=auth, **headers)
    assert reached == []  # answered by the lane
    full = _through_api_handler(
        "POST", "/api/v1/purchases", body=_purchase("lane-b", "LB"), authorization=auth, **headers
    )
    assert reached == ["/api/v1/purchases"]
    assert (lane.status_code, full.status_code) == (201, 201)
    # The same member, rules and basket: the same answer but for the ids.
    ids = {"external_id": "", "customer": ""}
    assert lane.json() | ids == full.json() | ids
    assert lane.json()["points_earned"] > 0
    assert sorted(lane.header_list) == sorted(full.header_list)
    assert_secure_headers(lane)
    # And a replay through the lane answers the original.
    again = wsgi("POST", "/api/v1/purchases", body=body, authorization=auth, **headers)
    assert (again.status_code, again.json()) == (200, lane.json())


def test_what_the_lane_does_not_take_goes_to_the_full_stack_with_its_body(token, monkeypatch):
    auth = f"Bearer {token}"
    reached = _full_stack(monkeypatch)
    # Whitespace DRF trims: the plain path refuses it, the full stack records it (so it read the body).
    answer = wsgi("POST", "/api/v1/purchases", body=_purchase("lane-c", "  LC  "), authorization=auth)
    assert (answer.status_code, answer.json()["customer"]) == (201, "LC")
    # A bad body: the API's error, in its shape.
    bad = wsgi("POST", "/api/v1/purchases", body=_purchase("lane-d", "LD", amount="-1"), authorization=auth)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid")
    # No token, a host the site does not serve: answered by the full stack as before.
    assert wsgi("POST", "/api/v1/purchases", body=_purchase("lane-e", "LE")).status_code == 401
    foreign = wsgi(
        "POST", "/api/v1/purchases", body=_purchase("lane-f", "LF"), authorization=auth, host="evil.example"
    )
    assert foreign.status_code == 400
    assert (
        foreign.status_code
        == _through_api_handler(
            "POST",
            "/api/v1/purchases",
            body=_purchase("lane-g", "LG"),
            authorization=auth,
            host="evil.example",
        ).status_code
    )
    assert reached == ["/api/v1/purchases"] * 5
    # Other methods and paths never enter the lane.
    assert wsgi("GET", "/api/v1/purchases", authorization=auth).status_code == 405
    assert reached[-1] == "/api/v1/purchases"
    assert len(reached) == 6
