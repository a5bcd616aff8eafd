"""Bad input at the API's boundaries: sizes, unicode, dates, amounts. Each is a clear 4xx in
the error shape, nothing is written, and never a 500.

Runs through the whole stack (middleware, DRF, services, PostgreSQL): PostgreSQL is the one
that refuses NUL characters in text and lone surrogates cannot be encoded for it, so only a
real database shows whether such input is caught before it gets there.
"""

import json
from urllib.parse import quote

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from rewards.models import CustomerEvent as Event
from rewards.models import Purchase, Redemption
from tests.factories import RewardFactory

NUL = "\x00"
LONE_SURROGATE = "\ud800"
# Hebrew with a right-to-left override, Arabic, an emoji family (a ZWJ sequence), Thai, a flag.
UNICODE_REFS = ["‮שלום-42", "عميل-٧", "👩‍👩‍👧‍👦", "ลูกค้า", "🇩🇰-C1"]


def post_json(api, path, body, **extra):
    """Encode like a client would; json.dumps keeps a lone surrogate as the escape \\ud800."""
    return api.generic("POST", path, json.dumps(body), content_type="application/json", **extra)


def purchase(**overrides):
    body = {
        "external_id": "b-1",
        "customer": "C1",
        "amount": "10.00",
        "currency": "DKK",
        "occurred_at": timezone.now().isoformat(),
        "enroll": True,
    }
    body.update(overrides)
    return body


def assert_4xx(response, status=400, code="invalid", field=None):
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    if field is not None:
        assert field in body["error"]["fields"], body
    return body["error"]


# --- Size ------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_json_in_the_error_shape(api, settings):
    body = '{"purchases": [' + ",".join(['{"external_id": "' + "x" * 1000 + '"}'] * 6000) + "]}"
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    response = api.generic("POST", "/api/v1/purchases/batch", body, content_type="application/json")
    error = assert_4xx(response, 413, "payload_too_large")
    assert "5 MB" in error["message"]
    assert response["Content-Type"].startswith("application/json")


def test_a_body_just_under_the_limit_is_read_and_judged_on_its_content(api, settings):
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE - 1000)
    response = post_json(api, "/api/v1/purchases", purchase(padding=padding))
    assert response.status_code == 201, response.content[:300]


def test_a_content_length_claiming_gigabytes_is_413_before_the_body_is_read(api):
    response = api.generic(
        "POST",
        "/api/v1/purchases",
        json.dumps(purchase()),
        content_type="application/json",
        CONTENT_LENGTH=str(10 * 2**30),
    )
    assert_4xx(response, 413, "payload_too_large")
    assert Purchase.objects.count() == 0


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("text/plain", '{"customer": "C1"}'),
        ("application/x-www-form-urlencoded", "customer=C1&amount=10.00"),
        (
            "multipart/form-data; boundary=xyz",
            '--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xyz--',
        ),
        ("application/xml", "<purchase/>"),
    ],
)
def test_a_body_that_is_not_json_is_415_in_the_error_shape(api, content_type, body):
    response = api.generic("POST", "/api/v1/purchases", body, content_type=content_type)
    assert_4xx(response, 415, "unsupported_media_type")
    assert Purchase.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"customer": "\xff\xfe"}',  # not UTF-8
        b"\xef\xbb\xbf" + json.dumps(purchase()).encode(),  # a byte order mark
        json.dumps(purchase()).replace('"10.00"', "NaN").encode(),  # not JSON, though Python writes it
        b'{"customer": "C1",}',
        b"",
    ],
    ids=["not-utf8", "bom", "nan-literal", "trailing-comma", "empty"],
)
def test_a_body_that_is_not_valid_json_is_400_not_500(api, body):
    response = api.generic("POST", "/api/v1/purchases", body, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] in ("malformed_request", "invalid")
    assert Purchase.objects.count() == 0


@pytest.mark.parametrize("body", [[{"customer": "C1"}], "purchase", 42, None], ids=repr)
def test_json_that_is_not_an_object_is_400(api, body):
    assert_4xx(post_json(api, "/api/v1/purchases", body))


def test_a_body_in_utf16_with_its_charset_is_read(api):
    body = json.dumps(purchase(customer="Søren-☕"), ensure_ascii=False).encode("utf-16")
    response = api.generic("POST", "/api/v1/purchases", body, content_type="application/json; charset=utf-16")
    assert response.status_code == 201, response.content[:300]
    assert Purchase.objects.get().customer.external_ref == "Søren-☕"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + "x" * 100_000,
        "Bearer ab\x00cd",
        "Bearer ÿÿÿÿ",
        "Bearer",
        "Bearer a b",
        "Basic dXNlcjpwYXNz",
    ],
    ids=["100-kB", "nul", "latin1", "no-token", "two-tokens", "basic"],
)
def test_a_malformed_or_huge_authorization_header_is_401_json(db, header):
    # (A WSGI server hands header values over as Latin-1, so nothing beyond it can arrive.)
    response = APIClient().get("/api/v1/rewards", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401, response.content[:300]
    assert response.json()["error"]["code"] in ("authentication_failed", "not_authenticated")


def test_too_many_query_parameters_are_400_json(api):
    response = api.get("/api/v1/rewards?" + "&".join(f"p{i}=1" for i in range(1001)))
    assert_4xx(response, 400, "too_many_parameters")


def test_json_nested_too_deep_to_parse_is_400_not_500(api):
    response = api.generic("POST", "/api/v1/purchases", "[" * 100_000, content_type="application/json")
    assert_4xx(response, 400, "malformed_request")


def test_more_than_1000_purchases_in_a_batch_is_400(api):
    response = post_json(api, "/api/v1/purchases/batch", {"purchases": [{}] * 1001})
    assert_4xx(response, field="purchases")


def test_a_batch_of_exactly_1000_purchases_is_recorded_with_a_result_each(api):
    items = [purchase(external_id=f"b-{i}", customer=f"C{i % 7}") for i in range(1000)]
    response = post_json(api, "/api/v1/purchases/batch", {"purchases": items})
    assert response.status_code == 200, response.content[:500]
    results = response.json()["results"]
    assert [(r["index"], r["status"]) for r in results] == [(i, 201) for i in range(1000)]
    assert [r["result"]["external_id"] for r in results] == [f"b-{i}" for i in range(1000)]
    assert Purchase.objects.count() == 1000


def test_more_than_500_lines_in_a_purchase_is_400(api):
    response = post_json(api, "/api/v1/purchases", purchase(items=[{"amount": "0.01"}] * 501))
    assert_4xx(response, field="items")
    assert Purchase.objects.count() == 0


def test_event_data_over_32000_characters_is_400(api):
    body = {"customer": "C1", "type": "review", "external_id": "e-1", "data": {"text": "x" * 32_001}}
    assert_4xx(post_json(api, "/api/v1/events", body), field="data")


def test_a_very_long_path_reference_is_a_clear_4xx(api):
    assert_4xx(api.get("/api/v1/customers/" + "C" * 5000), 404, "not_found")
    assert_4xx(post_json(api, "/api/v1/customers/" + "C" * 65 + "/enroll", {}), 422, "invalid")


# --- Unicode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", UNICODE_REFS)
def test_unicode_customer_refs_round_trip_through_body_and_path(api, ref):
    response = post_json(api, "/api/v1/purchases", purchase(customer=ref, external_id=f"u-{ref}"))
    assert response.status_code == 201, response.content
    assert response.json()["customer"] == ref
    read = api.get("/api/v1/customers/" + quote(ref, safe=""))
    assert read.status_code == 200 and read.json()["external_ref"] == ref


def test_unicode_external_ids_and_categories_are_kept_as_sent(api):
    items = [{"sku": "☕-1", "category": "قهوة ☕", "amount": "10.00"}]
    response = post_json(api, "/api/v1/purchases", purchase(external_id="קנייה-🧾-1", items=items))
    assert response.status_code == 201, response.content
    stored = Purchase.objects.get()
    assert stored.external_id == "קנייה-🧾-1"
    again = post_json(
        api,
        "/api/v1/purchases/" + quote("קנייה-🧾-1", safe="") + "/refunds",
        {"refund_id": "ↄ-1", "amount": "1.00"},
    )
    assert again.status_code == 201, again.content


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("field", ["customer", "external_id", "currency"])
def test_unstorable_characters_in_purchase_fields_are_400(api, field, bad):
    response = post_json(api, "/api/v1/purchases", purchase(**{field: f"C{bad}1"}))
    assert_4xx(response, field=field)
    assert Purchase.objects.count() == 0


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("field", ["category", "sku"])
def test_unstorable_characters_in_line_items_are_400(api, field, bad):
    items = [{field: f"coffee{bad}", "amount": "10.00"}]
    assert_4xx(post_json(api, "/api/v1/purchases", purchase(items=items)), field=f"items.0.{field}")
    assert_4xx(
        post_json(api, "/api/v1/preview", {"amount": "10.00", "items": items}), field=f"items.0.{field}"
    )


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
def test_unstorable_characters_anywhere_in_event_data_are_400(api, bad):
    for data in ({"text": f"a{bad}b"}, {f"k{bad}": 1}, {"deep": [{"list": [f"{bad}"]}]}):
        body = {"customer": "C1", "type": "review", "external_id": "e-1", "data": data}
        assert_4xx(post_json(api, "/api/v1/events", body), field="data")
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/customers/C%001",
        "/api/v1/customers/C%001/ledger",
    ],
)
def test_nul_in_a_path_reference_is_a_clean_4xx_on_reads(api, path):
    assert_4xx(api.get(path), field=None)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/customers/C%001/enroll",
        "/api/v1/customers/C%001/redemptions",
        "/api/v1/purchases/P%001/refunds",
        "/api/v1/vouchers/V%001/use",
    ],
)
def test_nul_in_a_path_reference_is_a_clean_4xx_on_writes(api, path):
    body = {"reward": 1, "refund_id": "r", "amount": "1.00"}
    assert_4xx(post_json(api, path, body))


def test_nul_in_the_idempotency_key_is_400_and_redeems_nothing(api):
    post_json(api, "/api/v1/customers/C1/enroll", {})
    reward = RewardFactory(cost_points=10)
    response = post_json(
        api, "/api/v1/customers/C1/redemptions", {"reward": reward.pk}, HTTP_IDEMPOTENCY_KEY="k\x001"
    )
    assert_4xx(response)
    assert Redemption.objects.count() == 0


def test_nul_in_query_parameters_is_a_clean_4xx(api):
    # (A URL cannot carry an unpaired surrogate: bad UTF-8 in it is decoded as U+FFFD.)
    post_json(api, "/api/v1/customers/C1/enroll", {})
    assert_4xx(api.get("/api/v1/customers/C1/ledger", {"kind": f"bonus{NUL}"}), 422)
    assert_4xx(api.get("/api/v1/customers/C1/ledger", {"page_size": f"1{NUL}"}), 422)
    assert_4xx(api.get("/api/v1/customers/C1/ledger", {"page": f"1{NUL}"}), 404, "not_found")
    assert_4xx(api.get("/api/v1/rewards", {"language": f"da{NUL}"}), 422)


def test_unstorable_characters_in_enrollment_fields_are_400(api):
    for field in ("first_name", "last_name", "email", "referral_code"):
        response = post_json(api, "/api/v1/customers/C1/enroll", {field: f"An{NUL}na"})
        assert_4xx(response, field=field)
        response = post_json(api, "/api/v1/customers/C1/enroll", {field: f"An{LONE_SURROGATE}na"})
        assert_4xx(response, field=field)


# --- Dates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+14:00",  # before the smallest datetime once in UTC
        "1999-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-14:00",  # past the largest datetime once in UTC
        "9999-12-31T23:59:59",  # naive: the site's time zone
        "10000-01-01T00:00:00Z",
        "2026-02-30T10:00:00Z",
        "2026-11-23T25:00:00Z",
        "",
        "1732356000",
    ],
)
def test_dates_far_in_the_past_or_future_or_impossible_are_400(api, value):
    assert_4xx(post_json(api, "/api/v1/purchases", purchase(occurred_at=value)), field="occurred_at")
    body = {"customer": "C1", "type": "review", "external_id": "e-1", "occurred_at": value}
    assert_4xx(post_json(api, "/api/v1/events", body), field="occurred_at")
    assert_4xx(
        post_json(api, "/api/v1/preview", {"amount": "10.00", "occurred_at": value}), field="occurred_at"
    )
    assert Purchase.objects.count() == 0 and Event.objects.count() == 0


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-20T10:00:00+25:00",  # no such offset
        "2026-11-20T23:59:60Z",  # a leap second: Python's datetime has none
        "2026-11-20T10:00:00Z" + "0" * 10_000,
    ],
    ids=["offset-25h", "leap-second", "10k-tail"],
)
def test_dates_in_impossible_forms_are_400(api, value):
    assert_4xx(post_json(api, "/api/v1/purchases", purchase(occurred_at=value)), field="occurred_at")
    assert Purchase.objects.count() == 0


def test_a_refund_dated_far_away_is_400(api):
    assert post_json(api, "/api/v1/purchases", purchase()).status_code == 201
    for value in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        response = post_json(
            api, "/api/v1/purchases/b-1/refunds", {"refund_id": "r-1", "amount": "1.00", "occurred_at": value}
        )
        assert_4xx(response, field="occurred_at")


@pytest.mark.parametrize("value", ["0001-01-01", "1899-12-31", "9999-12-31", "2026-02-30", "10000-01-01"])
def test_implausible_birthdays_are_400(api, value):
    assert_4xx(post_json(api, "/api/v1/customers/C1/enroll", {"birthday": value}), field="birthday")


# --- Amounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount,message",
    [
        ("0", "greater than 0"),
        ("0.00", "greater than 0"),
        ("-5.00", "greater than 0"),
        ("-0", "greater than 0"),
        ("1000000000000", "at most"),  # 10^12
        ("10000000.01", "at most"),
        ("1" + "0" * 400, "at most"),
        ("1.001", "2 decimal"),
        ("0.000000000000001", "2 decimal"),
        ("NaN", "plain decimal"),
        ("-NaN", "plain decimal"),
        ("sNaN", "plain decimal"),
        ("Infinity", "plain decimal"),
        ("-Infinity", "plain decimal"),
        ("1e3", "plain decimal"),
        ("1E+3", "plain decimal"),
        ("1e-2", "plain decimal"),
        ("12,50", "plain decimal"),
        (" 12.50", "plain decimal"),
        ("12.50 ", "plain decimal"),
        ("+12.50", "plain decimal"),
        ("١٢", "plain decimal"),  # Arabic-Indic digits: Decimal() would take them
        ("12.", "plain decimal"),
        (".5", "plain decimal"),
        ("", "plain decimal"),
        (12.5, "decimal strings"),
        (12, "decimal strings"),
        (None, "null"),
        (True, "decimal strings"),
        ({"value": "1"}, "decimal strings"),
    ],
)
def test_amounts_at_and_past_the_boundaries_are_400_with_a_reason(api, amount, message):
    error = assert_4xx(post_json(api, "/api/v1/purchases", purchase(amount=amount)), field="amount")
    assert message.lower() in " ".join(error["fields"]["amount"]).lower(), error
    assert_4xx(post_json(api, "/api/v1/preview", {"amount": amount}), field="amount")
    assert Purchase.objects.count() == 0


@pytest.mark.parametrize("amount", ["0.01", "10000000", "10000000.00", "007.50"])
def test_amounts_at_the_edges_of_the_range_are_accepted(api, amount):
    response = post_json(api, "/api/v1/purchases", purchase(amount=amount))
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("amount", ["0", "-1.00", "1e2", "NaN", "1.001", "1000000000000"])
def test_refund_amounts_at_the_boundaries_are_400(api, amount):
    assert post_json(api, "/api/v1/purchases", purchase()).status_code == 201
    response = post_json(api, "/api/v1/purchases/b-1/refunds", {"refund_id": "r-1", "amount": amount})
    assert_4xx(response, field="amount")


@pytest.mark.parametrize("quantity", ["-1", "1e3", "NaN", "1.0001", "1000000.001", 2])
def test_line_quantities_at_the_boundaries_are_400(api, quantity):
    items = [{"amount": "10.00", "quantity": quantity}]
    assert_4xx(post_json(api, "/api/v1/purchases", purchase(items=items)), field="items.0.quantity")


@pytest.mark.parametrize("reward", [0, -1, 2**63, 10**100, 1.5, "1", True, None])
def test_reward_ids_at_the_boundaries_are_400(api, reward):
    post_json(api, "/api/v1/customers/C1/enroll", {})
    assert_4xx(post_json(api, "/api/v1/customers/C1/redemptions", {"reward": reward}), field="reward")


@pytest.mark.parametrize("page_size", ["0", "-1", "201", "abc", "1e2", "١"])
def test_out_of_range_page_sizes_are_refused(api, page_size):
    post_json(api, "/api/v1/customers/C1/enroll", {})
    assert_4xx(api.get("/api/v1/customers/C1/ledger", {"page_size": page_size}), 422, field="page_size")


@pytest.mark.parametrize("page", ["0", "-1", "99999999999999999999", "abc"])
def test_pages_out_of_range_are_404(api, page):
    post_json(api, "/api/v1/customers/C1/enroll", {})
    assert_4xx(api.get("/api/v1/customers/C1/ledger", {"page": page}), 404, "not_found")


@pytest.mark.parametrize(
    "ref",
    ["C\n1", "C\x07 1", "\u200b", "\u200b\u200d\ufeff", "C\u2028D", "\ue000"],
    ids=["newline", "bell", "zero-width-only", "only-invisible", "line-separator", "private-use"],
)
def test_customer_refs_with_control_characters_or_only_invisible_ones_are_400(api, ref):
    response = post_json(api, "/api/v1/purchases", purchase(customer=ref))
    assert_4xx(response, field="customer")
    assert Purchase.objects.count() == 0


def test_unicode_customer_refs_that_print_are_accepted(api):
    for number, ref in enumerate(["Søren-1", "Пётр-2", "สมชาย-3", "李-4"]):
        response = post_json(api, "/api/v1/purchases", purchase(customer=ref, external_id=f"u-{number}"))
        assert response.status_code == 201, response.content
