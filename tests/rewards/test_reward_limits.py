"""What a reward allows, through the API: its stock, limit per customer, tier, availability
window and the validity of its vouchers. A refusal debits nothing; a voucher past its validity
is expired whoever meets it first (the till, a cancellation or the nightly job), the same way."""

import datetime as dt

import pytest
from django.utils import timezone

from accounts.models import Customer
from rewards import services
from rewards.models import LedgerEntry, PointsAccount, Redemption, Reward
from tests.factories import RewardFactory


@pytest.fixture
def shopper(api) -> Customer:
    """Member C1, Bronze, with 550 points: the signup bonus and a purchase of 500.00."""
    body = {
        "external_id": "p-1",
        "customer": "C1",
        "amount": "500.00",
        "currency": "DKK",
        "occurred_at": timezone.now().isoformat(),
        "enroll": True,
    }
    assert api.post("/api/v1/purchases", body, format="json").status_code == 201
    customer = Customer.objects.get(external_ref="C1")
    assert balance(customer) == 550
    return customer


def balance(customer) -> int:
    return PointsAccount.objects.get(pk=customer.pk).balance


def ledger(customer) -> list[tuple[str, int]]:
    return list(
        LedgerEntry.objects.filter(account_id=customer.pk).order_by("id").values_list("kind", "points")
    )


def redeem(api, reward, **extra):
    return api.post("/api/v1/customers/C1/redemptions", {"reward": reward.pk}, format="json", **extra)


def assert_error(response, status, code) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def issued_days_ago(voucher: dict, days: int, *, validity_days: int = 30) -> None:
    """Move a voucher back in time: redeemed `days` ago, valid for `validity_days` from then."""
    issued = timezone.now() - dt.timedelta(days=days)
    Redemption.objects.filter(pk=voucher["id"]).update(
        created_at=issued, expires_at=issued + dt.timedelta(days=validity_days)
    )


def state_of(voucher: dict) -> str:
    return Redemption.objects.get(pk=voucher["id"]).state


# --- Refusals at redemption: each debits nothing -----------------------------------------------


def assert_refused_and_nothing_debited(api, shopper, reward, code, *, redemptions_before=0):
    before = (balance(shopper), ledger(shopper), Reward.objects.get(pk=reward.pk).stock)
    assert_error(redeem(api, reward), 422, code)
    assert (balance(shopper), ledger(shopper), Reward.objects.get(pk=reward.pk).stock) == before
    assert Redemption.objects.filter(customer=shopper).count() == redemptions_before


def test_redeeming_a_reward_out_of_stock_is_refused_and_debits_nothing(api, shopper):
    reward = RewardFactory(cost_points=100, stock=1)
    assert redeem(api, reward).status_code == 201
    assert Reward.objects.get(pk=reward.pk).stock == 0 and balance(shopper) == 450
    assert_refused_and_nothing_debited(api, shopper, reward, "out_of_stock", redemptions_before=1)


def test_redeeming_past_the_limit_per_customer_is_refused_and_debits_nothing(api, shopper):
    reward = RewardFactory(cost_points=100, per_customer_limit=1)
    assert redeem(api, reward).status_code == 201
    assert_refused_and_nothing_debited(api, shopper, reward, "limit_reached", redemptions_before=1)


def test_redeeming_a_reward_of_a_higher_tier_is_refused_and_debits_nothing(api, shopper, program):
    _bronze, silver, _gold = program
    reward = RewardFactory(cost_points=100, min_tier=silver)
    assert_refused_and_nothing_debited(api, shopper, reward, "tier_too_low")


def test_redeeming_a_reward_before_it_is_available_is_refused_and_debits_nothing(api, shopper):
    reward = RewardFactory(cost_points=100, active_from=timezone.now() + dt.timedelta(days=1))
    assert_refused_and_nothing_debited(api, shopper, reward, "reward_unavailable")


def test_redeeming_a_reward_after_it_was_available_is_refused_and_debits_nothing(api, shopper):
    reward = RewardFactory(
        cost_points=100,
        active_from=timezone.now() - dt.timedelta(days=30),
        active_until=timezone.now() - dt.timedelta(seconds=1),
    )
    assert_refused_and_nothing_debited(api, shopper, reward, "reward_unavailable")


# --- The catalog -------------------------------------------------------------------------------


def test_the_reward_list_shows_only_rewards_that_can_be_redeemed_now(api, program):
    _bronze, _silver, gold = program
    now = timezone.now()
    RewardFactory(name="Coffee", cost_points=100)
    RewardFactory(name="Cake", cost_points=150, stock=3, active_until=now + dt.timedelta(days=5))
    RewardFactory(name="Lounge", cost_points=900, min_tier=gold)
    RewardFactory(name="Withdrawn", is_active=False)
    RewardFactory(name="Not yet", active_from=now + dt.timedelta(hours=1))
    RewardFactory(name="Over", active_until=now - dt.timedelta(seconds=1))
    RewardFactory(name="Sold out", stock=0)

    listed = api.get("/api/v1/rewards").json()

    # By cost; a reward a member's tier does not reach yet is listed with the tier it needs.
    assert [(r["name"], r["stock"], r["min_tier"]) for r in listed] == [
        ("Coffee", None, None),
        ("Cake", 3, None),
        ("Lounge", None, "gold"),
    ]
    assert listed[1]["available_until"] is not None


def test_the_reward_list_names_rewards_in_the_language_asked_for(api, program):
    RewardFactory(
        name="Free coffee",
        description="Any size",
        translations={"da": {"name": "Gratis kaffe", "description": "Alle størrelser"}},
    )

    danish = api.get("/api/v1/rewards?language=da").json()
    assert (danish[0]["name"], danish[0]["description"]) == ("Gratis kaffe", "Alle størrelser")
    # Without a translation, or without a language, the reward's own name.
    assert api.get("/api/v1/rewards?language=sv").json()[0]["name"] == "Free coffee"
    assert api.get("/api/v1/rewards").json()[0]["name"] == "Free coffee"
    assert_error(api.get("/api/v1/rewards?language=xx"), 422, "invalid")
    # Without ?language=, the Accept-Language header picks it; the query wins over the header.
    answer = api.get("/api/v1/rewards", HTTP_ACCEPT_LANGUAGE="da-DK,da;q=0.9,en;q=0.5")
    assert (answer.json()[0]["name"], answer["Content-Language"]) == ("Gratis kaffe", "da")
    swedish = api.get("/api/v1/rewards?language=sv", HTTP_ACCEPT_LANGUAGE="da")
    assert swedish.json()[0]["name"] == "Free coffee"


# --- Vouchers past their validity -------------------------------------------------------------


def test_using_a_voucher_past_its_validity_is_409_and_the_voucher_stays_expired(api, shopper):
    reward = RewardFactory(cost_points=100, validity_days=30, stock=5)
    voucher = redeem(api, reward).json()
    assert voucher["expires_at"] is not None
    issued_days_ago(voucher, 31)
    before = (balance(shopper), ledger(shopper))

    assert_error(api.post(f"/api/v1/vouchers/{voucher['voucher_code']}/use"), 409, "voucher_expired")

    assert state_of(voucher) == Redemption.State.EXPIRED
    assert Redemption.objects.get(pk=voucher["id"]).used_at is None
    assert services.vouchers_expire() == 0  # the nightly job finds nothing left to do
    # No points back, and the stock is not returned: as the job's expiry.
    assert (
        (balance(shopper), ledger(shopper))
        == before
        == (450, [("bonus", 50), ("earn", 500), ("redeem", -100)])
    )
    assert Reward.objects.get(pk=reward.pk).stock == 4
    assert_error(api.post(f"/api/v1/vouchers/{voucher['voucher_code']}/use"), 409, "voucher_expired")


def test_a_voucher_expired_at_the_till_ends_as_one_the_nightly_job_expired_first(api, shopper):
    reward = RewardFactory(cost_points=100, validity_days=30, stock=5)
    at_till, by_job = redeem(api, reward).json(), redeem(api, reward).json()
    issued_days_ago(at_till, 31)
    issued_days_ago(by_job, 32)
    assert services.vouchers_expire(now=timezone.now() - dt.timedelta(hours=36)) == 1  # by_job only
    before = (balance(shopper), ledger(shopper))

    answers = [api.post(f"/api/v1/vouchers/{v['voucher_code']}/use") for v in (at_till, by_job)]

    assert [a.status_code for a in answers] == [409, 409]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["error"]["code"] == "voucher_expired"
    rows = Redemption.objects.filter(pk__in=[at_till["id"], by_job["id"]]).values(
        "state", "used_at", "cancelled_at", "cancel_reason", "points"
    )
    assert len({tuple(row.items()) for row in rows}) == 1
    assert (balance(shopper), ledger(shopper)) == before
    assert Reward.objects.get(pk=reward.pk).stock == 3


def test_cancelling_a_voucher_past_its_validity_is_refused_and_returns_no_points(api, shopper):
    reward = RewardFactory(cost_points=100, validity_days=30, stock=5)
    past, expired_by_job = redeem(api, reward).json(), redeem(api, reward).json()
    issued_days_ago(expired_by_job, 40)
    services.vouchers_expire(now=timezone.now() - dt.timedelta(days=5))
    issued_days_ago(past, 31)
    before = (balance(shopper), ledger(shopper))

    refused = api.post(f"/api/v1/redemptions/{past['id']}/cancel", {"reason": "too late"}, format="json")

    error = assert_error(refused, 409, "not_cancellable")
    # The same refusal as for a voucher the nightly job had expired.
    again = api.post(f"/api/v1/redemptions/{expired_by_job['id']}/cancel", {}, format="json")
    assert assert_error(again, 409, "not_cancellable") == error
    assert state_of(past) == Redemption.State.EXPIRED
    assert (balance(shopper), ledger(shopper)) == before
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REVERSAL).exists()
    assert Reward.objects.get(pk=reward.pk).stock == 3
    assert services.vouchers_expire() == 0


def test_a_voucher_still_valid_is_cancelled_with_its_points_returned(api, shopper):
    reward = RewardFactory(cost_points=100, validity_days=30)
    voucher = redeem(api, reward).json()
    issued_days_ago(voucher, 29)
    cancelled = api.post(f"/api/v1/redemptions/{voucher['id']}/cancel", {}, format="json")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert balance(shopper) == 550


def test_the_voucher_job_expires_a_due_voucher_exactly_once(api, shopper):
    reward = RewardFactory(cost_points=100, validity_days=30)
    due, valid = redeem(api, reward).json(), redeem(api, reward).json()
    forever = redeem(api, RewardFactory(cost_points=100)).json()
    issued_days_ago(due, 31)
    before = (balance(shopper), ledger(shopper))

    assert services.vouchers_expire() == 1
    assert services.vouchers_expire() == 0

    assert [state_of(v) for v in (due, valid, forever)] == ["expired", "issued", "issued"]
    assert (balance(shopper), ledger(shopper)) == before and before[0] == 250


def test_a_gifted_voucher_is_cancelled_without_moving_points_and_its_stock_comes_back(api, shopper):
    # A campaign's offer (campaigns.delivery) gives a voucher for no points: cancelling it has no
    # points to return and writes no ledger entry.
    reward = RewardFactory(cost_points=100, stock=3)
    gift = services.voucher_gift(customer=shopper, reward_id=reward.pk, key="campaign:7:C1")
    assert gift.points == 0 and Reward.objects.get(pk=reward.pk).stock == 2
    before = (balance(shopper), ledger(shopper))

    cancelled = api.post(f"/api/v1/redemptions/{gift.pk}/cancel", {}, format="json")

    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert (balance(shopper), ledger(shopper)) == before
    assert Reward.objects.get(pk=reward.pk).stock == 3
    again = api.post(f"/api/v1/redemptions/{gift.pk}/cancel", {}, format="json")
    assert again.status_code == 200 and (balance(shopper), ledger(shopper)) == before


def test_a_gift_to_a_shopper_who_is_not_a_member_can_be_cancelled(program):
    from tests.factories import CustomerFactory

    shopper = CustomerFactory()  # no points account
    gift = services.voucher_gift(customer=shopper, reward_id=RewardFactory().pk, key="campaign:8")
    cancelled = services.redemption_cancel(redemption_id=gift.pk, reason="sent by mistake")
    assert cancelled.state == Redemption.State.CANCELLED and cancelled.cancel_reason == "sent by mistake"
    assert not LedgerEntry.objects.filter(account_id=shopper.pk).exists()
