"""The integration API: contract, errors, idempotency."""

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from rewards.models import LedgerEntry, Purchase
from rewards.services import integration_token_create
from tests.factories import CustomerFactory, RewardFactory


def purchase_body(**overrides):
    body = {
        "external_id": "p-1",
        "customer": "C1",
        "amount": "129.95",
        "currency": "DKK",
        "occurred_at": timezone.now().isoformat(),
    }
    body.update(overrides)
    return body


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_requests_without_a_valid_token_are_401(db):
    client = APIClient()
    assert_error(client.get("/api/v1/rewards"), 401, "not_authenticated")
    client.credentials(HTTP_AUTHORIZATION="Bearer nope")
    assert_error(client.get("/api/v1/rewards"), 401, "authentication_failed")


def test_token_is_stored_hashed(api):
    api.integration.refresh_from_db()
    assert api.integration.token_hash and len(api.integration.token_hash) == 64


def test_purchase_with_enroll_creates_member_and_earns(api):
    response = api.post("/api/v1/purchases", purchase_body(enroll=True), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["points_earned"] == 129
    assert body["balance"] == 50 + 129
    assert body["explanation"][0].startswith("129.95")
    assert body["summary"].startswith("129 pts")


def test_same_purchase_again_returns_the_original_with_200_and_other_body_409(api):
    body = purchase_body(enroll=True)
    first = api.post("/api/v1/purchases", body, format="json")
    again = api.post("/api/v1/purchases", body, format="json")
    assert again.status_code == 200 and again.json() == first.json()
    assert_error(
        api.post("/api/v1/purchases", {**body, "amount": "1.00"}, format="json"), 409, "idempotency_conflict"
    )
    assert Purchase.objects.count() == 1


def test_unknown_customer_becomes_a_non_member_shopper(api):
    response = api.post("/api/v1/purchases", purchase_body(customer="NEW"), format="json")
    assert response.status_code == 201
    assert response.json()["member"] is False and response.json()["points_earned"] == 0
    customer = api.get("/api/v1/customers/NEW").json()
    assert customer["member"] is False and customer["balance"] == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("amount", "-5.00"),
        ("amount", "NaN"),
        ("amount", "Infinity"),
        ("amount", "1.001"),
        ("amount", "99999999999"),
        ("amount", 12.5),
        ("amount", "abc"),
        ("currency", "EUR"),
        ("occurred_at", "2999-01-01T00:00:00Z"),
        ("occurred_at", "1970-01-01T00:00:00Z"),
        ("occurred_at", "yesterday"),
        ("external_id", "x" * 101),
        ("customer", ""),
    ],
)
def test_bad_purchase_input_is_a_clear_400(api, field, value):
    error = assert_error(
        api.post("/api/v1/purchases", purchase_body(**{field: value}), format="json"), 400, "invalid"
    )
    assert field in error["fields"]
    assert Purchase.objects.count() == 0


def test_malformed_json_is_400_not_500(api):
    response = api.generic("POST", "/api/v1/purchases", "{not json", content_type="application/json")
    assert_error(response, 400, "malformed_request")


def test_unknown_api_url_is_json_404(api):
    assert_error(api.get("/api/v1/nothing-here"), 404, "not_found")


def test_batch_gives_a_result_per_item(api):
    items = [purchase_body(external_id=f"b{i}", customer="C9", enroll=True) for i in range(3)]
    items.append(purchase_body(external_id="bad", amount="-1"))
    response = api.post("/api/v1/purchases/batch", {"purchases": items}, format="json")
    assert response.status_code == 200
    statuses = [r["status"] for r in response.json()["results"]]
    assert statuses == [201, 201, 201, 400]
    too_many = {"purchases": [purchase_body(external_id=str(i)) for i in range(1001)]}
    assert_error(api.post("/api/v1/purchases/batch", too_many, format="json"), 400, "invalid")


def test_refund_claws_back_and_is_idempotent(api):
    api.post("/api/v1/purchases", purchase_body(amount="100.00", enroll=True), format="json")
    r1 = api.post("/api/v1/purchases/p-1/refunds", {"refund_id": "r1", "amount": "50.00"}, format="json")
    assert r1.status_code == 201 and r1.json()["points_clawed_back"] == 50
    r2 = api.post("/api/v1/purchases/p-1/refunds", {"refund_id": "r1", "amount": "50.00"}, format="json")
    assert r2.status_code == 200 and r2.json() == r1.json()
    over = api.post("/api/v1/purchases/p-1/refunds", {"refund_id": "r2", "amount": "60.00"}, format="json")
    assert_error(over, 422, "refund_exceeds_purchase")
    assert_error(
        api.post("/api/v1/purchases/nope/refunds", {"refund_id": "r3", "amount": "1.00"}, format="json"),
        404,
        "not_found",
    )


def test_customer_read_shows_tier_progress_and_expiring_points(api):
    api.post("/api/v1/purchases", purchase_body(amount="1500.00", enroll=True), format="json")
    body = api.get("/api/v1/customers/C1").json()
    assert body["tier"]["code"] == "bronze"
    assert body["next_tier"]["code"] == "silver"
    assert body["spend_to_next_tier"] == "500.00"
    assert body["tier_progress"] == pytest.approx(0.75)
    assert body["points_expiring_30_days"] == 0
    assert_error(api.get("/api/v1/customers/NOPE"), 404, "not_found")


def test_ledger_is_paginated_and_filterable(api):
    for i in range(3):
        api.post("/api/v1/purchases", purchase_body(external_id=f"l{i}", enroll=True), format="json")
    body = api.get("/api/v1/customers/C1/ledger?page_size=2").json()
    assert body["count"] == 4 and len(body["results"]) == 2 and body["next"]
    bonus = api.get("/api/v1/customers/C1/ledger?kind=bonus").json()
    assert [e["kind"] for e in bonus["results"]] == ["bonus"]
    assert_error(api.get("/api/v1/customers/C1/ledger?kind=nope"), 422, "invalid")


def test_enroll_endpoint_is_idempotent(api):
    first = api.post(
        "/api/v1/customers/N1/enroll", {"email": "n1@example.com", "language": "da"}, format="json"
    )
    assert first.status_code == 201 and first.json()["balance"] == 50
    again = api.post("/api/v1/customers/N1/enroll", {}, format="json")
    assert again.status_code == 200 and again.json()["balance"] == 50
    bad = api.post("/api/v1/customers/N2/enroll", {"referral_code": "NOPE1234"}, format="json")
    assert_error(bad, 422, "unknown_referral_code")


def test_enroll_records_marketing_consent_and_when_it_changed(api):
    from accounts.models import Customer

    api.post("/api/v1/customers/N3/enroll", {"marketing_consent": True}, format="json")
    customer = Customer.objects.get(external_ref="N3")
    given_at = customer.marketing_consent_changed_at
    assert customer.marketing_consent is True and given_at is not None
    # The same answer again leaves the proof of when it was given alone; a withdrawal is dated anew.
    api.post("/api/v1/customers/N3/enroll", {"marketing_consent": True}, format="json")
    customer.refresh_from_db()
    assert customer.marketing_consent_changed_at == given_at
    api.post("/api/v1/customers/N3/enroll", {"marketing_consent": False}, format="json")
    customer.refresh_from_db()
    assert customer.marketing_consent is False and customer.marketing_consent_changed_at > given_at


def test_redeem_use_and_cancel_flow(api):
    api.post("/api/v1/purchases", purchase_body(amount="500.00", enroll=True), format="json")
    reward = RewardFactory(cost_points=300, name="Free coffee")
    assert api.get("/api/v1/rewards").json()[0]["name"] == "Free coffee"
    redeem = api.post(
        "/api/v1/customers/C1/redemptions", {"reward": reward.pk}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert redeem.status_code == 201
    voucher = redeem.json()
    assert voucher["balance"] == 250 and len(voucher["voucher_code"]) == 14
    replay = api.post(
        "/api/v1/customers/C1/redemptions", {"reward": reward.pk}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert replay.status_code == 200 and replay.json()["voucher_code"] == voucher["voucher_code"]
    assert_error(
        api.post("/api/v1/customers/C1/redemptions", {"reward": reward.pk}, format="json"),
        422,
        "insufficient_points",
    )
    used = api.post(f"/api/v1/vouchers/{voucher['voucher_code']}/use")
    assert used.status_code == 200 and used.json()["state"] == "used"
    assert_error(api.post(f"/api/v1/vouchers/{voucher['voucher_code']}/use"), 409, "voucher_used")
    assert_error(
        api.post(f"/api/v1/redemptions/{voucher['id']}/cancel", {}, format="json"), 409, "not_cancellable"
    )
    assert_error(api.post("/api/v1/vouchers/NOPE-NOPE-NOPE/use"), 404, "not_found")


def test_cancel_returns_points(api):
    api.post("/api/v1/purchases", purchase_body(amount="500.00", enroll=True), format="json")
    reward = RewardFactory(cost_points=300)
    voucher = api.post("/api/v1/customers/C1/redemptions", {"reward": reward.pk}, format="json").json()
    cancelled = api.post(
        f"/api/v1/redemptions/{voucher['id']}/cancel", {"reason": "changed mind"}, format="json"
    )
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["balance"] == 550


def test_events_earn_under_their_rule_once_per_id_and_within_the_cap(api):
    from rewards.models import EventRule

    EventRule.objects.create(
        event_type="product_review", name="Product review", points=25, cap_count=2, cap_period="month"
    )
    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    results = []
    for i in range(3):
        body = {"customer": "C1", "type": "product_review", "external_id": f"rev-{i}", "data": {"stars": 5}}
        results.append(api.post("/api/v1/events", body, format="json").json()["points_awarded"])
    assert results == [25, 25, 0]
    again = api.post(
        "/api/v1/events",
        {"customer": "C1", "type": "product_review", "external_id": "rev-0", "data": {"stars": 5}},
        format="json",
    )
    assert again.status_code == 200
    unruled = api.post(
        "/api/v1/events", {"customer": "C1", "type": "cart_abandoned", "external_id": "c1"}, format="json"
    )
    assert unruled.status_code == 201 and unruled.json()["points_awarded"] == 0
    assert api.get("/api/v1/customers/C1").json()["balance"] == 100


def test_preview_writes_nothing(api):
    customer = CustomerFactory(external_ref="PV")
    before = LedgerEntry.objects.count()
    response = api.post("/api/v1/preview", {"customer": "PV", "amount": "80.00"}, format="json")
    assert response.status_code == 200 and response.json()["points"] == 80
    assert LedgerEntry.objects.count() == before
    assert not Purchase.objects.filter(customer=customer).exists()


def test_schema_and_docs_are_served(client, db):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for operation in (
        "purchase_record",
        "purchase_refund",
        "reward_redeem",
        "voucher_use",
        "customer_ledger",
    ):
        assert operation in text
    assert client.get("/api/docs/").status_code == 200


def test_points_of_a_purchase_reported_late_expire_from_when_it_happened(api):
    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    old = (timezone.now() - dt.timedelta(days=800)).isoformat()
    api.post("/api/v1/purchases", purchase_body(occurred_at=old, amount="100.00"), format="json")
    from rewards import services

    services.points_expire(on_date=timezone.localdate())
    assert api.get("/api/v1/customers/C1").json()["balance"] == 50


def test_hot_paths_stay_within_their_query_budget(api, django_assert_max_num_queries):
    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    body = purchase_body(items=[{"category": "coffee", "amount": "129.95"}])
    # the member with their account locked and the promotions in force; one statement that
    # inserts the purchase (idempotent), its lines, the entry and lot, moves the balance and
    # reads the tier spend. The token was looked up by the first request and is remembered.
    # Inside the test's transaction the service's transaction is a SAVEPOINT and its RELEASE.
    with django_assert_max_num_queries(4):
        assert api.post("/api/v1/purchases", body, format="json").status_code == 201
    # The same purchase again: the lock, the insert that finds its twin, the twin.
    with django_assert_max_num_queries(5):
        assert api.post("/api/v1/purchases", body, format="json").status_code == 200
    # the customer with their account, qualifying spend and expiring points, in one query
    with django_assert_max_num_queries(1):
        assert api.get("/api/v1/customers/C1").status_code == 200


def _prepared_statements() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        return dict(cursor.fetchall())


def test_hot_path_statements_are_prepared_once_per_connection_and_reused(api):
    # PostgreSQL plans the purchase's big statement once per connection, not per purchase
    # (rewards/prepared.py); other statements are not prepared.
    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    for n in range(3):
        body = purchase_body(external_id=f"p-{n}", items=[{"category": "coffee", "amount": "129.95"}])
        assert api.post("/api/v1/purchases", body, format="json").status_code == 201
        assert api.get("/api/v1/customers/C1").status_code == 200
    executions = _prepared_statements()
    write = [n for statement, n in executions.items() if "INSERT INTO rewards_purchase " in statement]
    lock = [n for statement, n in executions.items() if "FOR UPDATE OF a" in statement]
    read = [n for statement, n in executions.items() if "LEFT JOIN rewards_pointsaccount" in statement]
    assert write == [3] and lock == [3] and read == [3], executions
    assert all("rewards_" in statement or "accounts_" in statement for statement in executions)
    assert len(executions) <= 4, executions


def test_a_revoked_or_disabled_token_is_refused_at_once(api):
    assert api.get("/api/v1/rewards").status_code == 200  # the token is now remembered
    api.integration.refresh_from_db()
    api.integration.is_active = False
    api.integration.save()
    assert_error(api.get("/api/v1/rewards"), 401, "authentication_failed")
    api.integration.is_active = True
    api.integration.save()
    assert api.get("/api/v1/rewards").status_code == 200
    integration_token_create(name="Shop POS")  # a new token replaces the old one
    assert_error(api.get("/api/v1/rewards"), 401, "authentication_failed")


def test_an_oversized_body_is_a_clear_4xx_not_a_500(api):
    huge = '{"purchases": [' + ",".join(['{"external_id": "' + "x" * 1000 + '"}'] * 6000) + "]}"
    response = api.generic("POST", "/api/v1/purchases/batch", huge, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["code"]


# --- Event caps per period ------------------------------------------------------------------


def _local_noon(day: dt.date) -> str:
    return dt.datetime.combine(day, dt.time(12), tzinfo=ZoneInfo(settings.TIME_ZONE)).isoformat()


def _month_before(day: dt.date) -> dt.date:
    """The 15th of the month before `day`'s."""
    return (day.replace(day=1) - dt.timedelta(days=1)).replace(day=15)


def _event(api, external_id: str, occurred_at: str | None = None, data: dict | None = None):
    body = {"customer": "C1", "type": "product_review", "external_id": external_id, "data": data or {}}
    if occurred_at:
        body["occurred_at"] = occurred_at
    return api.post("/api/v1/events", body, format="json")


@pytest.mark.parametrize("period", ["day", "month"])
def test_an_event_cap_starts_afresh_in_the_next_period(api, period):
    from rewards.models import EventRule

    EventRule.objects.create(
        event_type="product_review", name="Product review", points=25, cap_count=1, cap_period=period
    )
    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    today = timezone.localdate()
    earlier = today - dt.timedelta(days=1) if period == "day" else _month_before(today)
    awarded = [
        _event(api, "rev-1", _local_noon(earlier)).json()["points_awarded"],
        _event(api, "rev-2", _local_noon(earlier)).json()["points_awarded"],
        _event(api, "rev-3").json()["points_awarded"],  # now: the next period
        _event(api, "rev-4").json()["points_awarded"],
    ]
    assert awarded == [25, 0, 25, 0]
    assert api.get("/api/v1/customers/C1").json()["balance"] == 50 + 50


def test_a_back_dated_event_is_capped_in_its_own_period_not_by_later_ones(api):
    from rewards.models import EventRule

    EventRule.objects.create(
        event_type="product_review", name="Product review", points=25, cap_count=1, cap_period="month"
    )
    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    last_month = _month_before(timezone.localdate())
    month_before = _month_before(last_month)
    awarded = [
        _event(api, "dec", _local_noon(last_month)).json()["points_awarded"],
        # Reported late: it happened the month before, whose cap nothing has used yet.
        _event(api, "nov", _local_noon(month_before)).json()["points_awarded"],
        _event(api, "nov-2", _local_noon(month_before + dt.timedelta(days=3))).json()["points_awarded"],
    ]
    assert awarded == [25, 25, 0]
    assert api.get("/api/v1/customers/C1").json()["balance"] == 50 + 50


def test_an_event_id_sent_again_with_other_data_is_409_and_with_the_same_data_the_original(api):
    from rewards.models import CustomerEvent, EventRule

    EventRule.objects.create(event_type="product_review", name="Product review", points=25)
    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    first = _event(api, "rev-1", data={"stars": 5})
    assert first.status_code == 201 and first.json()["points_awarded"] == 25

    assert_error(_event(api, "rev-1", data={"stars": 1}), 409, "idempotency_conflict")
    again = _event(api, "rev-1", data={"stars": 5})

    assert again.status_code == 200 and again.json() == first.json()
    assert CustomerEvent.objects.filter(external_id="rev-1").count() == 1
    assert api.get("/api/v1/customers/C1").json()["balance"] == 50 + 25
    # The time is part of the event: the same id at another time is a conflict, at the same time
    # (or without one, a retry) the original.
    dated = _event(api, "rev-2", occurred_at="2026-03-01T10:00:00+01:00")
    assert dated.status_code == 201
    assert_error(_event(api, "rev-2", occurred_at="2026-03-02T10:00:00+01:00"), 409, "idempotency_conflict")
    assert _event(api, "rev-2", occurred_at="2026-03-01T09:00:00+00:00").json() == dated.json()
    assert _event(api, "rev-2").status_code == 200


# --- Expiring points, refunds ---------------------------------------------------------------


def test_customer_read_counts_the_points_left_on_lots_expiring_within_30_days(api):
    from rewards import rules
    from rewards.models import PointsLot

    api.post("/api/v1/customers/C1/enroll", {}, format="json")
    today = timezone.localdate()
    # About 23.5 months ago: under 24 months' expiry its lot expires in about two weeks; the
    # lot of a purchase 22 months ago expires in about two months.
    soon = (today.replace(day=min(today.day, 28), year=today.year - 2) + dt.timedelta(days=14)).isoformat()
    later = (today.replace(day=min(today.day, 28), year=today.year - 2) + dt.timedelta(days=60)).isoformat()
    for external_id, day, amount in (("old", soon, "120.00"), ("newer", later, "80.00")):
        body = purchase_body(external_id=external_id, amount=amount, occurred_at=f"{day}T12:00:00+00:00")
        assert api.post("/api/v1/purchases", body, format="json").status_code == 201
    lot = PointsLot.objects.get(entry__purchase__external_id="old")
    # A purchase reported late: its lot expires counted from when it happened.
    assert timezone.localtime(lot.expires_at).date() == rules.expiry_date(dt.date.fromisoformat(soon), 24)
    assert timezone.now() < lot.expires_at <= timezone.now() + dt.timedelta(days=30)
    # Spending takes the oldest lot first: what counts is what is left of it.
    reward = RewardFactory(cost_points=30)
    assert (
        api.post("/api/v1/customers/C1/redemptions", {"reward": reward.pk}, format="json").status_code == 201
    )

    body = api.get("/api/v1/customers/C1").json()

    assert body["balance"] == 50 + 120 + 80 - 30
    assert body["points_expiring_30_days"] == 90


def test_a_refund_id_sent_again_with_another_amount_is_409_and_claws_back_nothing_more(api):
    api.post("/api/v1/purchases", purchase_body(amount="100.00", enroll=True), format="json")
    first = api.post("/api/v1/purchases/p-1/refunds", {"refund_id": "r1", "amount": "30.00"}, format="json")
    assert first.status_code == 201 and first.json()["points_clawed_back"] == 30

    other = api.post("/api/v1/purchases/p-1/refunds", {"refund_id": "r1", "amount": "40.00"}, format="json")

    assert_error(other, 409, "idempotency_conflict")
    assert api.get("/api/v1/customers/C1").json()["balance"] == 50 + 100 - 30
    assert Purchase.objects.get(external_id="p-1").refunded_amount == Decimal("30.00")
