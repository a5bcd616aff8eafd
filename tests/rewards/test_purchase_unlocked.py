"""A known member's purchase without a transaction around it (services._purchase_record_unlocked).

Outside a transaction (the API, the batch endpoint) a known customer's purchase reads what it
depends on without a lock and writes in one statement that moves the account only if its row is
still the version read. These tests put a real second connection's write between the read and
the write (from inside the rules' evaluation, which runs between the two statements) and check
that the purchase reads again and ends as the locked path would have ended it.
"""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from rewards import rules, services
from rewards.errors import Conflict
from rewards.ledger_check import ledger_violations
from rewards.models import LedgerEntry, PointsAccount, PointsLot, Promotion, Purchase
from tests.factories import CustomerFactory, IntegrationFactory, StaffFactory, program_rules_set

pytestmark = pytest.mark.django_db(transaction=True)


# One moment for every purchase of this module: a replay must send the same body.
AT = timezone.now()


def record(integration, customer_ref: str, external_id: str, amount: str, **more):
    return services.purchase_record(
        integration=integration,
        external_id=external_id,
        customer_ref=customer_ref,
        amount=Decimal(amount),
        currency="DKK",
        occurred_at=AT,
        **more,
    )


class Statements(list):
    """The SQL of every statement the default connection sends inside the block (prepared ones
    included, which Django's query log records without their text)."""

    def __enter__(self):
        self._wrapper = connection.execute_wrapper(self._seen)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc):
        return self._wrapper.__exit__(*exc)

    def _seen(self, execute, sql, params, many, context):
        self.append(sql)
        return execute(sql, params, many, context)


def on_another_connection(fn):
    """Run fn in a thread of its own (its own database connection, committed when it returns)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def between_read_and_write(monkeypatch):
    """`between_read_and_write(fn, times=1)`: the first `times` evaluations of a purchase's
    rules first run fn on another connection. Returns the list of evaluations made."""
    calls = []
    original = rules.purchase_points

    def arrange(fn, times=1):
        def purchase_points(**kwargs):
            calls.append(kwargs["amount"])
            if len(calls) <= times:
                on_another_connection(fn)
            return original(**kwargs)

        monkeypatch.setattr(rules, "purchase_points", purchase_points)
        return calls

    return arrange


@pytest.fixture
def member(program):
    customer, _ = services.customer_enroll(customer=CustomerFactory())
    return customer


def balance_of(customer) -> int:
    return PointsAccount.objects.get(pk=customer.pk).balance


def test_a_known_members_purchase_is_one_read_and_one_write_without_a_transaction(member):
    integration = IntegrationFactory()
    with Statements() as statements:
        result = record(integration, member.external_ref, "p-1", "120.00")
    assert result.created and result.points_earned == 120
    assert len(statements) == 2, statements
    assert "LEFT JOIN rewards_pointsaccount" in statements[0] and "FOR UPDATE" not in statements[0]
    assert statements[1].lstrip().startswith("WITH a AS (\n    UPDATE rewards_pointsaccount")
    assert connection.get_autocommit()
    assert result.balance == balance_of(member) == 50 + 120  # the signup bonus, then the purchase
    assert ledger_violations() == []


def test_a_replay_is_answered_from_the_read(member):
    integration = IntegrationFactory()
    first = record(integration, member.external_ref, "p-1", "120.00")
    with Statements() as statements:
        again = record(integration, member.external_ref, "p-1", "120.00")
    assert not again.created and again.purchase.pk == first.purchase.pk and again.balance == first.balance
    assert not any(sql.lstrip().startswith("WITH") for sql in statements)
    assert balance_of(member) == first.balance


def test_a_balance_moved_between_read_and_write_makes_the_purchase_read_again(member, between_read_and_write):
    integration = IntegrationFactory()
    staff = StaffFactory()
    calls = between_read_and_write(
        lambda: services.points_adjust(customer=member, points=40, reason="goodwill", staff_user=staff)
    )
    result = record(integration, member.external_ref, "p-1", "100.00")
    assert len(calls) == 2  # the first write found a newer account row and wrote nothing
    assert result.created and result.points_earned == 100
    assert result.balance == balance_of(member) == 50 + 40 + 100
    entry = LedgerEntry.objects.get(purchase=result.purchase)
    assert entry.balance_after == result.balance
    assert Purchase.objects.count() == 1
    assert ledger_violations() == []


def test_a_debt_created_between_read_and_write_is_repaid_first(member, between_read_and_write):
    """Earnings repay points debt first: a debt that appears after the read must be seen."""
    integration = IntegrationFactory()
    staff = StaffFactory()
    between_read_and_write(
        lambda: services.points_adjust(
            customer=member, points=-80, reason="bonus given twice", staff_user=staff
        )
    )
    result = record(integration, member.external_ref, "p-1", "100.00")
    assert result.balance == balance_of(member) == 50 - 80 + 100
    entry = LedgerEntry.objects.get(purchase=result.purchase)
    assert {"code": "debt_repaid", "points": 30} in entry.explanation
    assert PointsLot.objects.get(entry=entry).points == 70
    assert ledger_violations() == []


def test_a_refund_without_clawback_between_read_and_write_is_seen_by_the_tier_upgrade(
    member, between_read_and_write
):
    """Silver needs 2,000 of spend in 12 months. 1,950 already bought (without points), then 100
    more would cross it — unless the 1,950 is refunded first, which claws nothing back but
    lowers the spend: the refund changes the account row, so the purchase reads again."""
    integration = IntegrationFactory()
    record(integration, member.external_ref, "big", "1950.00", award_points=False)
    assert balance_of(member) == 50
    between_read_and_write(
        lambda: services.purchase_refund(
            integration=integration, purchase_external_id="big", refund_id="r-1", amount=Decimal("1950.00")
        )
    )
    result = record(integration, member.external_ref, "p-1", "100.00")
    account = PointsAccount.objects.select_related("tier").get(pk=member.pk)
    assert account.tier.code == "bronze"
    assert result.points_earned == 100 and account.balance == 150
    assert ledger_violations() == []


def test_without_the_refund_the_same_purchase_upgrades(member):
    integration = IntegrationFactory()
    record(integration, member.external_ref, "big", "1950.00", award_points=False)
    result = record(integration, member.external_ref, "p-1", "100.00")
    account = PointsAccount.objects.select_related("tier").get(pk=member.pk)
    assert account.tier.code == "silver" and account.tier_changed_at is not None
    # The crossing purchase earns at the tier the member had when buying; the next at Silver's.
    assert result.points_earned == 100
    assert record(integration, member.external_ref, "p-2", "100.00").points_earned == 125


def test_an_account_that_keeps_moving_gets_the_locked_path(member, between_read_and_write):
    integration = IntegrationFactory()
    staff = StaffFactory()
    calls = between_read_and_write(
        lambda: services.points_adjust(customer=member, points=10, reason="test", staff_user=staff),
        times=services._UNLOCKED_ATTEMPTS,
    )
    result = record(integration, member.external_ref, "p-1", "100.00")
    # Every unlocked attempt lost to a newer account row; the locked path then recorded it.
    assert len(calls) == services._UNLOCKED_ATTEMPTS + 1
    assert result.created and result.balance == balance_of(member) == 50 + 30 + 100
    assert Purchase.objects.count() == 1
    assert ledger_violations() == []


def test_a_twin_recorded_between_read_and_write_is_the_answer(member, between_read_and_write):
    integration = IntegrationFactory()
    twin = {}
    between_read_and_write(
        lambda: twin.setdefault("result", record(integration, member.external_ref, "p-1", "100.00"))
    )
    result = record(integration, member.external_ref, "p-1", "100.00")
    assert twin["result"].created and not result.created
    assert result.purchase.pk == twin["result"].purchase.pk and result.balance == twin["result"].balance
    assert balance_of(member) == 150
    assert LedgerEntry.objects.filter(kind="earn").count() == 1
    assert ledger_violations() == []


def test_the_same_id_for_another_body_between_read_and_write_is_a_conflict(member, between_read_and_write):
    integration = IntegrationFactory()
    other = services.customer_enroll(customer=CustomerFactory())[0]
    between_read_and_write(lambda: record(integration, other.external_ref, "p-1", "70.00"))
    with pytest.raises(Conflict):
        record(integration, member.external_ref, "p-1", "100.00")
    assert balance_of(member) == 50  # the failed statement moved nothing
    assert Purchase.objects.get().customer_id == other.pk
    assert ledger_violations() == []


def test_referred_members_and_enrolments_take_the_locked_path(program, between_read_and_write):
    """A referred member's first purchase gives both sides their bonus, in one transaction."""
    program_rules_set(referral_bonus_referrer=100, referral_bonus_referee=25)
    integration = IntegrationFactory()
    referrer = services.customer_enroll(customer=CustomerFactory())[0]
    friend = services.customer_enroll(customer=CustomerFactory(), referral_code=referrer.referral_code)[0]
    with Statements() as statements:
        record(integration, friend.external_ref, "p-1", "100.00")
    assert any("FOR UPDATE" in sql for sql in statements)
    assert LedgerEntry.objects.filter(idempotency_key__startswith="referral:").count() == 2
    result = record(integration, "WALK-IN-1", "p-2", "30.00", enroll=True)
    assert result.created and result.purchase.customer.is_member
    assert ledger_violations() == []


# --- Promotions for a list of customers --------------------------------------------------------


@pytest.fixture
def promoted(program):
    """Members A (on the promotion's list) and B (not), and double points for A in force now."""
    a, _ = services.customer_enroll(customer=CustomerFactory(external_ref="PROMO-A"))
    b, _ = services.customer_enroll(customer=CustomerFactory(external_ref="PROMO-B"))
    promotion = Promotion.objects.create(
        name="Double for the list",
        multiplier=Decimal("2"),
        starts_at=timezone.now() - dt.timedelta(hours=1),
        ends_at=timezone.now() + dt.timedelta(hours=1),
    )
    promotion.customers.add(a)
    return a, b


def test_a_promotion_for_a_customer_list_multiplies_only_their_purchases_through_the_api(promoted):
    a, b = promoted
    _integration, token = services.integration_token_create(name="Promo POS")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    answers = {}
    for customer in (a, b):
        body = {
            "external_id": f"api-{customer.external_ref}",
            "customer": customer.external_ref,
            "amount": "100.00",
            "currency": "DKK",
            "occurred_at": timezone.now().isoformat(),
        }
        with Statements() as statements:
            answers[customer] = client.post("/api/v1/purchases", body, format="json")
        # The unlocked path: no row lock, the write conditional on the account's row version.
        assert not any("FOR UPDATE" in sql for sql in statements), statements
        assert any(
            sql.lstrip().startswith("WITH a AS (\n    UPDATE rewards_pointsaccount") for sql in statements
        )

    assert answers[a].status_code == answers[b].status_code == 201
    assert answers[a].json()["points_earned"] == 200 and answers[b].json()["points_earned"] == 100
    assert (balance_of(a), balance_of(b)) == (50 + 200, 50 + 100)
    assert ledger_violations() == []


def test_a_promotion_for_a_customer_list_multiplies_only_their_purchases_in_a_callers_transaction(promoted):
    a, b = promoted
    integration = IntegrationFactory()
    results = {}
    with transaction.atomic(), Statements() as statements:
        for customer in (a, b):
            results[customer] = services.purchase_record(
                integration=integration,
                external_id=f"svc-{customer.external_ref}",
                customer_ref=customer.external_ref,
                amount=Decimal("100.00"),
                currency="DKK",
                occurred_at=timezone.now(),
            )
    # The locked path: the account row locked for the caller's transaction.
    assert any("FOR UPDATE" in sql for sql in statements), statements

    assert results[a].points_earned == 200 and results[b].points_earned == 100
    promotion_lines = [line for line in results[a].purchase.explanation if line["code"] == "promotion"]
    assert promotion_lines == [{"code": "promotion", "name": "Double for the list", "multiplier": "2"}]
    assert not any(line["code"] == "promotion" for line in results[b].purchase.explanation)
    assert (balance_of(a), balance_of(b)) == (50 + 200, 50 + 100)
    assert ledger_violations() == []
