"""Random sequences of earn / redeem / refund / expire / adjust / cancel keep every invariant."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from rewards import services
from rewards.errors import DomainError, InsufficientPoints, PointsDebt
from rewards.ledger_check import ledger_violations
from rewards.models import PointsAccount, Purchase, Redemption
from tests.factories import CustomerFactory, IntegrationFactory, RewardFactory, StaffFactory


@pytest.mark.parametrize(
    "mode",
    [
        # Inside the test's transaction: every purchase takes the locked path.
        pytest.param("locked", marks=pytest.mark.django_db),
        # Autocommit, as the API runs: a known member's purchase takes the unlocked path
        # (services._purchase_record_unlocked), the other moves their own atomic blocks.
        pytest.param("unlocked", marks=pytest.mark.django_db(transaction=True)),
    ],
)
def test_random_sequences_keep_the_ledger_invariants(program, mode):
    integration = IntegrationFactory(name="stateful")
    rewards = [RewardFactory(cost_points=cost) for cost in (40, 150, 600)]
    staff = StaffFactory(username="stateful-staff")

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.customer, _ = services.customer_enroll(customer=CustomerFactory())
            self.purchases: list[str] = []
            self.redemptions: list[int] = []
            self.counter = 0

        def balance(self) -> int:
            return PointsAccount.objects.get(pk=self.customer.pk).balance

        def next_id(self, prefix: str) -> str:
            self.counter += 1
            return f"{prefix}-{self.customer.pk}-{self.counter}"

        @rule(
            amount=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("3000"), places=2),
            days_ago=st.integers(0, 900),
        )
        def earn(self, amount, days_ago):
            external_id = self.next_id("p")
            services.purchase_record(
                integration=integration,
                external_id=external_id,
                customer_ref=self.customer.external_ref,
                amount=amount,
                currency="DKK",
                occurred_at=timezone.now() - dt.timedelta(days=days_ago),
            )
            self.purchases.append(external_id)

        @rule(reward_index=st.integers(0, 2))
        def redeem(self, reward_index):
            before = self.balance()
            reward = rewards[reward_index]
            try:
                result = services.reward_redeem(customer=self.customer, reward_id=reward.pk)
            except (InsufficientPoints, PointsDebt):
                return
            assert before >= reward.cost_points
            assert self.balance() >= 0
            self.redemptions.append(result.redemption.pk)

        @rule(data=st.data())
        def refund(self, data):
            if not self.purchases:
                return
            external_id = data.draw(st.sampled_from(self.purchases))
            purchase = Purchase.objects.get(integration=integration, external_id=external_id)
            left = purchase.amount - purchase.refunded_amount
            if left <= 0:
                return
            cents = data.draw(st.integers(1, int(left * 100)))
            services.purchase_refund(
                integration=integration,
                purchase_external_id=external_id,
                refund_id=self.next_id("r"),
                amount=Decimal(cents) / 100,
            )
            purchase.refresh_from_db()
            assert purchase.points_clawed_back <= purchase.points_earned
            if purchase.refunded_amount == purchase.amount:
                assert purchase.points_clawed_back == purchase.points_earned

        @rule()
        def expire(self):
            services.points_expire(on_date=timezone.localdate())

        @rule(points=st.integers(-500, 500).filter(bool))
        def adjust(self, points):
            services.points_adjust(customer=self.customer, points=points, reason="test", staff_user=staff)

        @rule(data=st.data())
        def cancel(self, data):
            if not self.redemptions:
                return
            redemption_id = data.draw(st.sampled_from(self.redemptions))
            before = self.balance()
            state = Redemption.objects.get(pk=redemption_id).state
            try:
                redemption = services.redemption_cancel(redemption_id=redemption_id)
            except DomainError:
                return
            if state == "issued":
                assert self.balance() == before + redemption.points

        @invariant()
        def ledger_balances(self):
            assert ledger_violations() == []

    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            database=None,
        ),
    )
