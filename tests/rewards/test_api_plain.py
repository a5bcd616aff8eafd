"""The plain path of POST /api/v1/purchases (rewards/api_fast.py) accepts only what PurchaseIn
accepts, with exactly its validated data, and answers as the DRF view does."""

import datetime as dt
import json

import pytest
from django.test import RequestFactory
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards.api import PurchaseIn
from rewards.api_fast import purchase_answer, purchase_plain
from rewards.models import Purchase
from rewards.services import integration_token_create

NOW = timezone.now()


def typical_body(**overrides) -> dict:
    body = {
        "external_id": "POS1-000123",
        "customer": "C000042",
        "amount": "129.95",
        "currency": "DKK",
        "occurred_at": NOW.isoformat(timespec="seconds"),
        "items": [{"sku": "ESP-1", "category": "coffee-beans", "quantity": "1", "amount": "89.95"}],
    }
    body.update(overrides)
    return body


texts = st.one_of(
    st.sampled_from(
        ["C1", "POS1-000123", "", " C1", "C1 ", "Åse-7", "ก", "a\x00b", "\ud800", "\t", "\u200b", "x" * 64]
    ),
    st.sampled_from(
        ["y" * 65, "z" * 100, "z" * 101, "\u00a0C1", "C\u2028", "dkk", "DKK", "SEK", "DK", "DKKK"]
    ),
    st.text(max_size=8),
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
)
amounts = st.one_of(
    st.from_regex(r"\A\d{1,9}(\.\d{0,3})?\Z"),
    st.sampled_from(
        ["0", "0.00", "-1", "1e3", "NaN", "Infinity", " 1.00", "1.00 ", "1.00\n", "١٢", "10000000"]
    ),
    st.sampled_from(["10000000.01", "99999999.99", "000000001.00", "1.", ".5", "+1", "1_000"]),
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
    st.integers(0, 10**9),
    st.floats(),
)
moments = st.one_of(
    st.datetimes(
        min_value=dt.datetime(1990, 1, 1),
        max_value=dt.datetime(2030, 1, 1),
        timezones=st.one_of(st.none(), st.timezones()),
    ).map(lambda value: value.isoformat()),
    st.sampled_from(
        [
            "2026-13-01T00:00:00Z",
            "2026-11-23",
            "2026-11-23T10:15:00",
            "2026-11-23T10:15:00+01:00",
            "2026-11-23 10:15:00Z",
            "2026-11-23T10:15:00.123456+05:30",
            "1999-12-31T23:59:59Z",
            "2026-11-23T10:15:00+24:00",
            "9999-12-31T23:59:59-23:59",
            "now",
            "",
        ]
    ),  # fmt: skip
    st.just(NOW.isoformat()),
    st.just((NOW + dt.timedelta(hours=23)).isoformat()),
    st.just((NOW + dt.timedelta(hours=25)).isoformat()),
    st.integers(),
)
items = st.lists(
    st.dictionaries(
        st.sampled_from(["sku", "category", "quantity", "amount", "price"]),
        st.one_of(texts, amounts, st.from_regex(r"\A\d{1,8}(\.\d{0,4})?\Z")),
        max_size=5,
    ),
    max_size=4,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "external_id": texts,
        "customer": texts,
        "amount": amounts,
        "currency": texts,
        "occurred_at": moments,
        "items": st.one_of(items, texts),
        "enroll": st.one_of(st.booleans(), texts),
        "note": texts,
    },
)


# Near-valid bodies: what tills send, with printable and unprintable text, edge amounts and
# times in every zone; then the same with one field replaced by anything.
near_text = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9\-]{1,20}\Z"),
    st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=70),
    st.text(st.characters(codec="utf-8"), min_size=0, max_size=70),
)
near_amount = st.from_regex(r"\A[0-9]{1,8}(\.[0-9]{1,2})?\Z")
near_moment = st.datetimes(
    min_value=dt.datetime(1999, 12, 31), max_value=dt.datetime(2026, 12, 31), timezones=st.timezones()
).map(lambda value: value.isoformat())
near_items = st.lists(
    st.fixed_dictionaries(
        {"amount": near_amount},
        optional={
            "sku": near_text,
            "category": near_text,
            "quantity": st.from_regex(r"\A[0-9]{1,7}(\.[0-9]{1,3})?\Z"),
        },
    ),
    max_size=3,
)
near_bodies = st.fixed_dictionaries(
    {
        "external_id": near_text,
        "customer": near_text,
        "amount": near_amount,
        "currency": st.sampled_from(["DKK", "DKK", "DKK", "dkk", " DKK"]),
        "occurred_at": st.one_of(near_moment, st.just(NOW.isoformat())),
    },
    optional={"items": near_items, "enroll": st.booleans()},
)
wild_bodies = st.one_of(bodies, bodies.map(lambda extra: {**typical_body(), **extra}))
mutated_bodies = st.tuples(near_bodies, bodies).map(
    lambda pair: {**pair[0], **dict(list(pair[1].items())[:1])}
)


def normal(data: dict) -> dict:
    normalised = dict(data)
    if "items" in normalised:
        normalised["items"] = [dict(item) for item in normalised["items"]]
    normalised["occurred_at_text"] = normalised["occurred_at"].isoformat()
    return normalised


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(near_bodies, mutated_bodies, wild_bodies))
def test_the_plain_path_accepts_a_subset_of_what_the_serializer_does_with_the_same_data(body):
    plain = purchase_plain(body)
    if plain is None:
        return
    serializer = PurchaseIn(data=body)
    assert serializer.is_valid(), (body, serializer.errors)
    assert normal(plain) == normal(serializer.validated_data)


def test_what_tills_send_takes_the_plain_path():
    assert purchase_plain(typical_body()) is not None
    assert purchase_plain(typical_body(items=[], enroll=True)) is not None
    no_lines = typical_body()
    del no_lines["items"]
    assert purchase_plain(no_lines) is not None


@pytest.fixture
def token(program):
    return integration_token_create(name="plain")[1]


def test_the_plain_path_answers_a_till_and_the_full_path_answers_the_same(token, client):
    body = typical_body(customer="P1", enroll=True)
    request = RequestFactory().post(
        "/api/v1/purchases",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    plain = purchase_answer(request)
    assert plain is not None and plain.status_code == 201
    # The same purchase again with an extra key the serializer ignores: DRF answers the replay.
    replay = client.post(
        "/api/v1/purchases",
        json.dumps({**body, "note": "again"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert replay.status_code == 200
    assert replay.content == plain.content
    assert (replay["Content-Type"], replay["Allow"]) == (plain["Content-Type"], plain["Allow"])
    assert Purchase.objects.count() == 1


def test_errors_of_the_service_are_answered_by_the_full_path_in_the_error_shape(token, client):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    first = client.post("/api/v1/purchases", typical_body(), content_type="application/json", **auth)
    assert first.status_code == 201
    conflict = client.post(
        "/api/v1/purchases", typical_body(amount="1.00"), content_type="application/json", **auth
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert Purchase.objects.count() == 1


def test_requests_the_plain_path_does_not_take_are_answered_as_before(token, client):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    factory = RequestFactory()
    for request in [
        factory.post(
            "/api/v1/purchases", json.dumps(typical_body()), content_type="application/json"
        ),  # no token
        factory.post(
            "/api/v1/purchases",
            json.dumps(typical_body()),
            content_type="application/json",
            HTTP_ACCEPT="text/html",
            **auth,
        ),
        factory.post("/api/v1/purchases", "{", content_type="application/json", **auth),
        factory.post(
            "/api/v1/purchases",
            json.dumps(typical_body(amount="-1")),
            content_type="application/json",
            **auth,
        ),
        factory.post("/api/v1/purchases", json.dumps(typical_body()), content_type="text/plain", **auth),
    ]:
        assert purchase_answer(request) is None
    assert Purchase.objects.count() == 0
    # Through the view, each of those gets DRF's answer.
    indented = client.post(
        "/api/v1/purchases",
        json.dumps(typical_body()),
        content_type="application/json",
        HTTP_ACCEPT="application/json; indent=2",
        **auth,
    )
    assert indented.status_code == 201 and b"\n  " in indented.content
