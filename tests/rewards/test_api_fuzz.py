"""The integration API fuzzed from its own OpenAPI schema (schemathesis).

Every operation of /api/schema/ is called in-process through the WSGI app with a valid
integration token: the schema's examples, schemathesis's boundary values ("coverage") and
generated inputs, valid and invalid. Each response must be no server error, have a status
the schema documents, and a body that conforms to it (for errors: the one error shape).

The seed and the number of examples are fixed so the suite sees the same cases every run;
`make fuzz` runs a longer, differently seeded session (FUZZ_EXAMPLES, FUZZ_SEED).
"""

import os

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from loyalty_site.wsgi import application
from rewards.services import customer_enroll, integration_token_create, reward_redeem
from tests.factories import CustomerFactory, RewardFactory

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20261123"))

# Loaded at collection, in-process: the schema view needs no database. The site's own WSGI
# application, so the calls run through the API's middleware stack as under gunicorn.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
# No example database: the seed alone decides what is sent, so a failure replays anywhere.
# Every call carries the valid token (401s are the authorization tests' business), and unknown
# query parameters are ignored by design (cache busters, tracking), so neither is a "negative" case.
schema.config.generation.update(
    max_examples=FUZZ_EXAMPLES, database="none", with_security_parameters=False, allow_extra_parameters=True
)
schema.config.seed = FUZZ_SEED
# Not checked: "every schema-valid request is accepted". The API refuses on purpose what a
# JSON schema cannot say: NUL characters (PostgreSQL cannot store them), a zero amount where
# the pattern allows "0", amounts over the maximum, dates in the future, unknown customers.
# Each of those is a documented 4xx in the error shape, which the other checks verify.
schema.config.checks.positive_data_acceptance.enabled = False


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token(db, program):
    """A valid token, and a member, a reward and a voucher for the generated calls to find.

    The calls run inside the test's transaction, as with Django's test client: a database error
    in one call would abort it and make every later call of the operation fail loudly, so
    nothing is hidden by not committing, and no table flush per operation is paid."""
    integration, token = integration_token_create(name="fuzz")
    customer, _ = customer_enroll(customer=CustomerFactory(external_ref="C000042"))
    reward = RewardFactory(cost_points=10)
    reward_redeem(customer=customer, reward_id=reward.pk, integration=integration)
    # The WSGI handler closes the connection after each request, which would end the test's
    # transaction; Django's test client disconnects the same signal handlers.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield token
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.serial
@schema.parametrize()
# The token and data are made once per operation and shared by its examples, on purpose.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_api_operation_answers_within_its_schema_and_never_500(case, token):
    case.call_and_validate(headers=auth(token))


# --- What the fuzzer found, replayed ----------------------------------------------------------
# Each case is one failure schemathesis reported, as it sent it; fixed in rewards/api.py.
# The answer must be the status given, in the error shape, conforming to the schema.

FOUND = [
    # DRF's BooleanField took 0 (and "yes", "on") for false: the schema says boolean.
    (
        "POST",
        "/api/v1/customers/{external_ref}/enroll",
        {"external_ref": "0"},
        None,
        {"email": "0@0.com", "marketing_consent": 0},
        400,
    ),
    (
        "POST",
        "/api/v1/purchases",
        {},
        None,
        {
            "external_id": "POS1-1",
            "customer": "C000042",
            "amount": "129.95",
            "currency": "DKK",
            "occurred_at": "2026-11-23T10:15:00+01:00",
            "enroll": 0,
        },
        400,
    ),
    # DRF's CharField took the number 0 as the string "0": the schema says string.
    (
        "POST",
        "/api/v1/events",
        {},
        None,
        {"customer": "C000042", "type": "product_review", "external_id": 0, "data": {}},
        400,
    ),
    # A NUL in a key of the event's data reached PostgreSQL's jsonb: a 500 (make fuzz, seed 4242).
    (
        "POST",
        "/api/v1/events",
        {},
        None,
        {"type": "index", "external_id": "e-1", "customer": "C000042", "data": {"\u0000": None, "g": [1]}},
        400,
    ),
    # An unknown language was ignored: the schema lists the languages.
    ("GET", "/api/v1/rewards", {}, {"language": "AAA"}, None, 422),
    # A bad page_size silently became 50.
    (
        "GET",
        "/api/v1/customers/{external_ref}/ledger",
        {"external_ref": "C000042"},
        {"page_size": "0"},
        None,
        422,
    ),
]


@pytest.mark.parametrize(("method", "path", "path_parameters", "query", "body", "status"), FOUND)
def test_inputs_the_fuzzer_found_accepted_are_refused_in_the_error_shape(
    token, method, path, path_parameters, query, body, status
):
    operation = schema[path][method]
    kwargs = {"path_parameters": path_parameters, "query": query}
    if body is not None:
        kwargs["body"] = body
    case = operation.Case(**kwargs)
    response = case.call(headers=auth(token))
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]["code"] == "invalid"
    case.validate_response(response, headers=auth(token))


def test_a_batch_item_error_has_the_documented_shape(token):
    """The batch answered {"index", "status", "error": {...}} while the schema described the
    item's error as the whole error body ({"error": {"error": ...}})."""
    case = schema["/api/v1/purchases/batch"]["POST"].Case(body={"purchases": [{"x": {}}]})
    response = case.call(headers=auth(token))
    assert response.status_code == 200
    item = response.json()["results"][0]
    assert item["status"] == 400 and item["error"]["code"] == "invalid"
    case.validate_response(response, headers=auth(token))


def test_the_ledger_page_has_the_documented_shape(token):
    """The ledger answers a page object (count, next, previous, results); the schema said a list."""
    case = schema["/api/v1/customers/{external_ref}/ledger"]["GET"].Case(
        path_parameters={"external_ref": "C000042"}, query={"page_size": "1"}
    )
    response = case.call(headers=auth(token))
    assert response.status_code == 200
    assert response.json()["count"] == 2 and len(response.json()["results"]) == 1
    case.validate_response(response, headers=auth(token))
