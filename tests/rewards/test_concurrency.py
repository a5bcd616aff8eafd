"""Real concurrent connections against PostgreSQL: the guarantees hold under contention."""

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from rewards import services
from rewards.errors import DomainError
from rewards.ledger_check import ledger_violations
from rewards.models import LedgerEntry, PointsAccount, Purchase, Redemption
from tests.factories import (
    CustomerFactory,
    IntegrationFactory,
    RewardFactory,
    program_rules_set,
    standard_tiers,
)

pytestmark = pytest.mark.django_db(transaction=True)


def run_concurrently(n: int, fn):
    """Run fn(i) in n threads released together; each thread uses its own database connection."""
    barrier = threading.Barrier(n)

    def worker(i):
        try:
            barrier.wait(timeout=30)
            return fn(i)
        except Exception as exc:  # collected and inspected by the test
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(worker, range(n)))
    close_old_connections()
    return results


def record(integration, customer_ref: str, external_id: str, amount: Decimal, *, at=None, **more):
    """purchase_record in the program's currency, now unless `at`."""
    return services.purchase_record(
        integration=integration,
        external_id=external_id,
        customer_ref=customer_ref,
        amount=amount,
        currency="DKK",
        occurred_at=at or timezone.now(),
        **more,
    )


@pytest.fixture
def setup_program():
    program_rules_set(points_per_unit=1, signup_bonus=0, expiry_months=24)
    standard_tiers()


def test_50_concurrent_redemptions_against_a_balance_for_10(setup_program):
    customer, _ = services.customer_enroll(customer=CustomerFactory())
    integration = IntegrationFactory()
    record(integration, customer.external_ref, "seed", Decimal("1000"))
    reward = RewardFactory(cost_points=100)

    results = run_concurrently(50, lambda i: services.reward_redeem(customer=customer, reward_id=reward.pk))

    succeeded = [r for r in results if isinstance(r, services.RedeemResult)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(succeeded) == 10
    assert len(refused) == 40 and all(r.code == "insufficient_points" for r in refused)
    assert PointsAccount.objects.get(pk=customer.pk).balance == 0
    assert Redemption.objects.count() == 10
    assert (
        min(LedgerEntry.objects.filter(account_id=customer.pk).values_list("balance_after", flat=True)) == 0
    )
    assert ledger_violations() == []


def test_same_purchase_posted_20_times_concurrently_is_one_set_of_entries(setup_program):
    customer, _ = services.customer_enroll(customer=CustomerFactory())
    integration = IntegrationFactory()
    at = timezone.now()

    def post(i):
        return record(integration, customer.external_ref, "dup", Decimal("250"), at=at)

    results = run_concurrently(20, post)
    assert all(isinstance(r, services.PurchaseResult) for r in results), results
    assert sum(r.created for r in results) == 1
    assert Purchase.objects.count() == 1
    assert LedgerEntry.objects.filter(kind="earn").count() == 1
    assert PointsAccount.objects.get(pk=customer.pk).balance == 250
    assert {r.balance for r in results} == {250}


def test_same_new_shopper_purchase_20_times_concurrently_creates_one_customer_and_purchase(setup_program):
    integration = IntegrationFactory()
    at = timezone.now()

    def post(i):
        return record(integration, "BRAND-NEW", "new", Decimal("10"), at=at, enroll=True)

    results = run_concurrently(20, post)
    assert all(isinstance(r, services.PurchaseResult) for r in results), results
    assert Purchase.objects.count() == 1
    assert PointsAccount.objects.count() == 1
    assert ledger_violations() == []


def test_same_purchase_id_with_two_bodies_concurrently_records_one_and_refuses_the_other(setup_program):
    customer, _ = services.customer_enroll(customer=CustomerFactory())
    integration = IntegrationFactory()
    at = timezone.now()

    def post(i):
        amount = Decimal("100") if i % 2 else Decimal("300")
        return record(integration, customer.external_ref, "same-id", amount, at=at)

    results = run_concurrently(20, post)
    recorded = Purchase.objects.get()
    winners = [r for r in results if isinstance(r, services.PurchaseResult)]
    refused = [r for r in results if not isinstance(r, services.PurchaseResult)]
    assert sum(r.created for r in winners) == 1
    assert len(winners) == 10 and {r.purchase.amount for r in winners} == {recorded.amount}
    assert len(refused) == 10 and all(getattr(r, "code", None) == "idempotency_conflict" for r in refused)
    assert PointsAccount.objects.get(pk=customer.pk).balance == int(recorded.amount)
    assert ledger_violations() == []


def test_same_non_member_purchase_20_times_concurrently_is_recorded_once(setup_program):
    shopper = CustomerFactory(enrolled_at=None)
    integration = IntegrationFactory()
    at = timezone.now()

    def post(i):
        lines = [{"category": "coffee", "amount": Decimal("42.50")}]
        return record(integration, shopper.external_ref, "shopper-dup", Decimal("42.50"), at=at, lines=lines)

    results = run_concurrently(20, post)
    assert all(isinstance(r, services.PurchaseResult) for r in results), results
    assert sum(r.created for r in results) == 1
    purchase = Purchase.objects.get()
    assert purchase.lines.count() == 1 and not purchase.was_member
    assert LedgerEntry.objects.count() == 0


def test_concurrent_purchases_of_one_member_add_up_and_upgrade_the_tier_once_crossed(setup_program):
    customer, _ = services.customer_enroll(customer=CustomerFactory())
    integration = IntegrationFactory()

    def post(i):
        return record(integration, customer.external_ref, f"c{i}", Decimal("250"))

    results = run_concurrently(12, post)  # 3,000 of spend: past silver (2,000)
    assert all(isinstance(r, services.PurchaseResult) and r.created for r in results), results
    account = PointsAccount.objects.select_related("tier").get(pk=customer.pk)
    assert account.tier.code == "silver"
    assert account.balance == sum(r.points_earned for r in results)
    # Each purchase's balance_after is the balance right after it: all different, the last the total.
    assert sorted(r.balance for r in results)[-1] == account.balance
    assert len({r.balance for r in results}) == 12
    assert ledger_violations() == []


def test_concurrent_refunds_purchases_and_redemptions_keep_the_invariants(setup_program):
    customer, _ = services.customer_enroll(customer=CustomerFactory())
    integration = IntegrationFactory()
    for i in range(5):
        record(integration, customer.external_ref, f"p{i}", Decimal("200"))
    reward = RewardFactory(cost_points=150, stock=3)

    def mixed(i):
        if i % 3 == 0:
            return services.purchase_refund(
                integration=integration,
                purchase_external_id=f"p{i % 5}",
                refund_id=f"r{i}",
                amount=Decimal("50"),
            )
        if i % 3 == 1:
            return services.reward_redeem(customer=customer, reward_id=reward.pk)
        return record(integration, customer.external_ref, f"n{i}", Decimal("30"))

    results = run_concurrently(24, mixed)
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, DomainError)]
    assert unexpected == []
    reward.refresh_from_db()
    assert reward.stock == 3 - Redemption.objects.count()
    assert ledger_violations() == []
