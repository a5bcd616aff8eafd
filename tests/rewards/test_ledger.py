"""The ledger's guarantees, on PostgreSQL."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from rewards import services
from rewards.errors import Conflict, InsufficientPoints, PointsDebt
from rewards.models import LedgerEntry, PointsAccount, PointsLot, Redemption
from rewards.selectors import ledger_list
from tests.factories import CategoryMultiplierFactory, RewardFactory, days_ago


def balance(customer) -> int:
    return PointsAccount.objects.get(pk=customer.pk).balance


def buy(integration, customer, amount, ext, *, at=None, lines=None):
    return services.purchase_record(
        integration=integration,
        external_id=ext,
        customer_ref=customer.external_ref,
        amount=Decimal(amount),
        currency="DKK",
        occurred_at=at or timezone.now(),
        lines=lines,
    )


def test_enrolment_gives_the_signup_bonus_once(member):
    assert balance(member) == 50
    services.customer_enroll(customer=member)
    assert balance(member) == 50


def test_purchase_earns_points_rounded_down_with_category_multiplier(member, integration):
    CategoryMultiplierFactory(category="coffee", multiplier=Decimal("2"))
    result = buy(
        integration,
        member,
        "99.90",
        "p1",
        lines=[{"category": "coffee", "amount": "20.00"}, {"category": "food", "amount": "79.90"}],
    )
    # 99.90 base + 20 extra for coffee = 119.90 → 119
    assert result.points_earned == 119
    assert result.balance == 50 + 119
    assert [line["code"] for line in result.purchase.explanation] == ["base", "category", "total"]


def test_same_purchase_twice_is_recorded_once_and_other_data_conflicts(member, integration):
    at = timezone.now()
    first = buy(integration, member, "100", "p1", at=at)
    again = buy(integration, member, "100", "p1", at=at)
    assert again.created is False and again.purchase.pk == first.purchase.pk
    assert balance(member) == 150
    with pytest.raises(Conflict):
        buy(integration, member, "101", "p1", at=at)


def test_non_member_purchase_is_recorded_but_earns_nothing(program, integration):
    result = services.purchase_record(
        integration=integration,
        external_id="x",
        customer_ref="NEW1",
        amount=Decimal("300"),
        currency="DKK",
        occurred_at=timezone.now(),
    )
    assert result.points_earned == 0 and result.purchase.customer.is_member is False
    assert not PointsAccount.objects.filter(pk=result.purchase.customer_id).exists()


def test_buy_redeem_refund_leaves_member_in_debt_and_next_purchase_repays(member, integration):
    buy(integration, member, "1000", "p1")  # 50 + 1000
    reward = RewardFactory(cost_points=1050)
    services.reward_redeem(customer=member, reward_id=reward.pk)
    assert balance(member) == 0
    services.purchase_refund(
        integration=integration, purchase_external_id="p1", refund_id="r1", amount=Decimal("1000")
    )
    assert balance(member) == -1000
    with pytest.raises(PointsDebt):
        services.reward_redeem(customer=member, reward_id=RewardFactory(cost_points=1).pk)
    buy(integration, member, "1200", "p2")
    assert balance(member) == 200
    lots = sum(PointsLot.objects.filter(account_id=member.pk).values_list("remaining", flat=True))
    assert lots == 200


def test_partial_refunds_claw_back_proportionally_and_fully_at_the_end(member, integration):
    buy(integration, member, "99", "p1")
    services.purchase_refund(
        integration=integration, purchase_external_id="p1", refund_id="r1", amount=Decimal("33")
    )
    assert balance(member) == 50 + 66
    services.purchase_refund(
        integration=integration, purchase_external_id="p1", refund_id="r2", amount=Decimal("66")
    )
    assert balance(member) == 50


def test_redemption_never_makes_balance_negative(member):
    reward = RewardFactory(cost_points=51)
    with pytest.raises(InsufficientPoints):
        services.reward_redeem(customer=member, reward_id=reward.pk)
    assert balance(member) == 50


def test_cancelled_redemption_returns_points(member):
    reward = RewardFactory(cost_points=30, stock=5)
    result = services.reward_redeem(customer=member, reward_id=reward.pk, idempotency_key="k1")
    assert services.reward_redeem(customer=member, reward_id=reward.pk, idempotency_key="k1").created is False
    assert balance(member) == 20
    services.redemption_cancel(redemption_id=result.redemption.pk)
    services.redemption_cancel(redemption_id=result.redemption.pk)
    assert balance(member) == 50
    reward.refresh_from_db()
    assert reward.stock == 5
    assert Redemption.objects.get().state == "cancelled"


def test_expiry_takes_oldest_lots_and_running_twice_changes_nothing(member, integration):
    buy(integration, member, "100", "old", at=days_ago(800))
    buy(integration, member, "40", "new", at=days_ago(10))
    assert balance(member) == 190
    today = timezone.localdate()
    result = services.points_expire(on_date=today)
    # The signup bonus (earned now) and the recent purchase stay; the 800-day-old lot expires.
    assert result["points"] == 100
    assert balance(member) == 90
    assert services.points_expire(on_date=today)["points"] == 0
    assert balance(member) == 90


def test_spending_consumes_the_oldest_lot_first(member, integration):
    buy(integration, member, "100", "old", at=days_ago(300))
    buy(integration, member, "40", "new", at=days_ago(10))
    services.reward_redeem(customer=member, reward_id=RewardFactory(cost_points=120).pk)
    remaining = dict(
        PointsLot.objects.filter(account_id=member.pk).values_list("entry__idempotency_key", "remaining")
    )
    # oldest first: the 300-day lot (100), then the 10-day lot (20 of 40); the signup bonus (now) is untouched
    assert remaining == {
        f"purchase:{_pid('old')}:earn": 0,
        f"purchase:{_pid('new')}:earn": 20,
        f"signup:{member.pk}": 50,
    }


def _pid(external_id):
    from rewards.models import Purchase

    return Purchase.objects.get(external_id=external_id).pk


def test_database_refuses_update_and_delete_of_entries_issued_as_raw_sql(member):
    entry = LedgerEntry.objects.filter(account_id=member.pk).first()
    for sql in (
        "UPDATE rewards_ledgerentry SET points = 1000 WHERE id = %s",
        "DELETE FROM rewards_ledgerentry WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [entry.pk])
    assert LedgerEntry.objects.get(pk=entry.pk).points == 50


def test_database_refuses_a_zero_point_entry_inserted_as_raw_sql(member):
    # A kind without a sign rule of its own (reversal), so only the zero check can refuse it.
    sql = """
        INSERT INTO rewards_ledgerentry
            (account_id, kind, points, balance_after, created_at, idempotency_key, explanation, reason)
        VALUES (%s, 'reversal', 0, 50, now(), 'raw-zero', '[]'::jsonb, '')
    """
    with (
        pytest.raises(IntegrityError, match="entry_points_not_zero"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [member.pk])
    assert not LedgerEntry.objects.filter(idempotency_key="raw-zero").exists()


def test_tier_upgrades_on_the_purchase_that_crosses_and_downgrades_nightly(member, integration):
    buy(integration, member, "2500", "p1", at=days_ago(400))
    buy(integration, member, "2500", "p2", at=days_ago(200))
    account = PointsAccount.objects.get(pk=member.pk)
    assert account.tier.code == "silver"
    services.purchase_refund(
        integration=integration, purchase_external_id="p2", refund_id="r", amount=Decimal("2000")
    )
    services.tiers_recalculate(on_date=timezone.localdate())
    assert PointsAccount.objects.get(pk=member.pk).tier.code == "bronze"


def test_adjust_needs_a_reason_and_keeps_who(member, admin_user):
    entry = services.points_adjust(
        customer=member, points=-70, reason="Duplicate bonus", staff_user=admin_user
    )
    assert entry.balance_after == -20 and entry.staff_user == admin_user
    assert ledger_list(customer_id=member.pk).first().kind == "adjust"


def test_birthday_bonus_once_a_year(program, integration):
    from tests.factories import CustomerFactory, program_rules_set

    program_rules_set(birthday_bonus=200)
    today = timezone.localdate()
    customer = CustomerFactory(birthday=dt.date(1990, today.month, min(today.day, 28)))
    services.customer_enroll(customer=customer)
    day = today.replace(day=min(today.day, 28))
    assert services.birthday_bonuses_award(on_date=day)["awarded"] == 1
    assert services.birthday_bonuses_award(on_date=day)["awarded"] == 0
    assert balance(customer) == 250


def test_a_referral_paying_only_the_referrer_pays_once_and_later_purchases_still_record(program, integration):
    # With no bonus for the referred friend, only the referrer's entry marks the bonus as given.
    from tests.factories import CustomerFactory, program_rules_set

    program_rules_set(referral_bonus_referrer=100, referral_bonus_referee=0)
    referrer, _ = services.customer_enroll(customer=CustomerFactory())
    friend, _ = services.customer_enroll(customer=CustomerFactory(), referral_code=referrer.referral_code)
    before = balance(referrer)
    for n in range(3):
        assert buy(integration, friend, "50", f"ref-{n}").created
    assert balance(referrer) == before + 100
    assert LedgerEntry.objects.filter(idempotency_key__startswith=f"referral:{friend.pk}:").count() == 1
