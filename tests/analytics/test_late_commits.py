"""The rollup and purchases or refunds that commit late: their ids are taken when they are
inserted, they become visible at commit, so an update can read past an id that is still in
flight (the history import's chunks on two connections, an API purchase in a long
transaction) or that was rolled back. Real concurrent connections, no mocks."""

import datetime as dt
import logging
import threading
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.utils import timezone

from analytics import rollup, services
from analytics.models import CustomerDay, CustomerMonth, RollupGap
from rewards.models import Purchase, Refund
from tests.factories import CustomerFactory

from .conftest import local, refund_whole

pytestmark = pytest.mark.django_db(transaction=True)

# More than the 2,000 ids below its watermark that the update used to re-read.
FAR = 2100

DAY_FIELDS = [f.attname for f in CustomerDay._meta.concrete_fields]
MONTH_FIELDS = [f.attname for f in CustomerMonth._meta.concrete_fields]


def rollup_rows() -> tuple[list, list]:
    return (
        list(CustomerDay.objects.order_by("customer_id", "day").values_list(*DAY_FIELDS)),
        list(CustomerMonth.objects.order_by("customer_id", "month_number").values_list(*MONTH_FIELDS)),
    )


def assert_equals_a_rebuild() -> None:
    kept = rollup_rows()
    rollup.rollup_rebuild()
    assert rollup_rows() == kept


@contextmanager
def in_flight(write):
    """Run write() in a transaction of a second connection that stays open (its ids taken, its
    rows invisible to others) until the block ends; then it commits, or rolls back when
    write() raised Rollback at the end. Yields what write() returned."""
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    outcome: dict = {}

    def writer():
        try:
            with transaction.atomic():
                outcome["value"] = write()
                started.set()
                release.wait(30)
                if outcome.get("roll_back"):
                    transaction.set_rollback(True)
        except BaseException as exc:  # seen by the test below
            outcome["error"] = exc
            started.set()
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(30)
    try:
        yield outcome
    finally:
        release.set()
        assert done.wait(30)
        thread.join()
    if "error" in outcome:
        raise outcome["error"]


def many_purchases(customer, day, count, integration):
    """`count` purchases of one local day committed at once (another writer's chunk)."""
    Purchase.objects.bulk_create(
        Purchase(
            integration=integration,
            external_id=f"chunk-{customer.pk}-{n}",
            customer=customer,
            amount=Decimal("1"),
            currency="DKK",
            occurred_at=local(day),
            request_hash="",
        )
        for n in range(count)
    )


def test_a_purchase_committed_late_far_below_the_watermark_is_counted_by_the_next_update(buy):
    today = timezone.localdate()
    ann, bo = CustomerFactory(external_ref="ann"), CustomerFactory(external_ref="bo")
    first = buy(bo, today - dt.timedelta(days=30), 10)
    services.analytics_refresh(as_of=today)

    with in_flight(lambda: buy(ann, today - dt.timedelta(days=3), 77)) as late:
        many_purchases(bo, today - dt.timedelta(days=2), FAR, first.integration)
        answer = services.analytics_update()  # runs between the two commits
        assert not CustomerDay.objects.filter(customer=ann).exists()
        assert answer["customers_touched"] == 1  # bo
        late_id = late["value"].pk
        assert RollupGap.objects.filter(kind="purchase", first_id__lte=late_id, last_id__gte=late_id).exists()
    assert Purchase.objects.order_by("-pk").values_list("pk", flat=True)[0] - late_id == FAR

    answer = services.analytics_update()

    assert answer["customers_touched"] == 1 and answer["scores_refreshed"] == 1
    day = CustomerDay.objects.get(customer=ann)
    assert (day.day, day.net_amount, day.seq) == (today - dt.timedelta(days=3), Decimal("77.00"), 1)
    assert not RollupGap.objects.exists()  # found, and no other id is missing
    services.analytics_refresh(as_of=today)  # the nightly refresh keeps it
    assert CustomerDay.objects.filter(customer=ann).count() == 1
    assert_equals_a_rebuild()


def test_a_refund_committed_late_below_the_watermark_removes_the_purchase_day(buy):
    today = timezone.localdate()
    ann, bo = CustomerFactory(external_ref="ann"), CustomerFactory(external_ref="bo")
    refunded = buy(ann, today - dt.timedelta(days=20), 40)
    buy(ann, today - dt.timedelta(days=10), 25)
    others = [buy(bo, today - dt.timedelta(days=n), 5) for n in (9, 8, 7)]
    services.analytics_refresh(as_of=today)
    assert CustomerDay.objects.filter(customer=ann).count() == 2

    with in_flight(lambda: refund_whole(refunded, "late")):
        for n, purchase in enumerate(others):  # refunds with larger ids, committed first
            refund_whole(purchase, f"r{n}")
        services.analytics_update()
        assert CustomerDay.objects.filter(customer=ann).count() == 2
        assert not CustomerDay.objects.filter(customer=bo).exists()

    answer = services.analytics_update()

    assert answer["customers_touched"] == 1
    days = list(CustomerDay.objects.filter(customer=ann).values_list("day", "seq", "prev_day_number"))
    assert days == [(today - dt.timedelta(days=10), 1, None)]
    assert Refund.objects.count() == 4 and not RollupGap.objects.exists()
    assert_equals_a_rebuild()


def test_a_rolled_back_purchase_leaves_a_hole_that_is_forgotten_and_changes_nothing(buy):
    today = timezone.localdate()
    ann, bo = CustomerFactory(external_ref="ann"), CustomerFactory(external_ref="bo")
    buy(bo, today - dt.timedelta(days=30), 10)
    services.analytics_refresh(as_of=today)

    with in_flight(lambda: buy(ann, today - dt.timedelta(days=3), 77)) as doomed:
        doomed["roll_back"] = True
        buy(bo, today - dt.timedelta(days=2), 12)
    hole = doomed["value"].pk
    assert not Purchase.objects.filter(pk=hole).exists()

    # The update after the rollback reads past the hole and notes it ...
    first = services.analytics_update()
    assert first["customers_touched"] == 1
    assert RollupGap.objects.filter(kind="purchase", first_id__lte=hole, last_id__gte=hole).exists()
    after_first = rollup_rows()
    # ... the next looks again, finds nothing and, with no transaction left that could fill
    # it, forgets it.
    second = services.analytics_update()
    assert second["customers_touched"] == 0 and "run" not in second
    assert not RollupGap.objects.exists()
    assert rollup_rows() == after_first
    assert not CustomerDay.objects.filter(customer=ann).exists()
    assert_equals_a_rebuild()


def test_a_hole_is_kept_while_an_older_transaction_is_open_and_forgotten_after_the_horizon(
    buy, monkeypatch, caplog
):
    today = timezone.localdate()
    bo = CustomerFactory(external_ref="bo")
    buy(bo, today - dt.timedelta(days=30), 10)
    services.analytics_refresh(as_of=today)
    with in_flight(lambda: buy(bo, today - dt.timedelta(days=3), 7)) as doomed:
        doomed["roll_back"] = True
        buy(bo, today - dt.timedelta(days=2), 12)
    hole = doomed["value"].pk

    # A session that began before the hole was noted and is still open: it could hold the id.
    with in_flight(lambda: list(Purchase.objects.values_list("pk")[:1])):
        services.analytics_update()  # notes the hole
        for _ in range(2):
            services.analytics_update()
            assert RollupGap.objects.filter(first_id__lte=hole, last_id__gte=hole).exists()
        monkeypatch.setattr(rollup, "GAP_HORIZON", dt.timedelta(0))
        with caplog.at_level(logging.WARNING, logger="analytics.rollup"):
            services.analytics_update()
    assert not RollupGap.objects.exists()
    assert f"purchase {hole}-{hole}" in caplog.text


def test_a_purchase_in_flight_during_a_rebuild_is_counted_by_the_next_update(buy):
    today = timezone.localdate()
    ann, bo = CustomerFactory(external_ref="ann"), CustomerFactory(external_ref="bo")
    buy(bo, today - dt.timedelta(days=30), 10)
    with in_flight(lambda: buy(ann, today - dt.timedelta(days=4), 30)):
        buy(bo, today - dt.timedelta(days=2), 12)
        rollup.rollup_rebuild()
        assert not CustomerDay.objects.filter(customer=ann).exists()

    assert rollup.rollup_update()["customers_touched"] == 1
    assert CustomerDay.objects.filter(customer=ann).count() == 1
    assert_equals_a_rebuild()


def test_updates_between_interleaved_writers_equal_a_rebuild_and_a_second_update_changes_nothing(buy):
    """Two writers whose transactions overlap, updates in between: the rollup ends as a
    rebuild from every purchase would leave it."""
    today = timezone.localdate()
    customers = [CustomerFactory(external_ref=f"c{n}") for n in range(4)]
    seed = buy(customers[0], today - dt.timedelta(days=40), 10)
    services.analytics_refresh(as_of=today)

    def chunk(offset):
        return [
            buy(customers[(offset + n) % 4], today - dt.timedelta(days=(offset + n) % 9 + 1), 5 + n)
            for n in range(6)
        ]

    with in_flight(lambda: chunk(0)):
        with in_flight(lambda: chunk(1)) as rolled_back:
            rolled_back["roll_back"] = True
            chunk(2)
            services.analytics_update()
            with in_flight(lambda: refund_whole(seed, "late")):
                chunk(3)
                services.analytics_update()
        services.analytics_update()
    services.analytics_update()
    kept = rollup_rows()
    assert services.analytics_update()["customers_touched"] == 0
    assert rollup_rows() == kept
    assert_equals_a_rebuild()


def test_the_identity_sequences_hand_out_one_id_at_a_time():
    # The gaps' reasoning: an id not taken yet is taken above every id visible now. A sequence
    # that caches ids per session would hand out ids below them.
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT s.cache_size FROM pg_sequences s
               WHERE s.schemaname || '.' || s.sequencename IN (
                   pg_get_serial_sequence('rewards_purchase', 'id'),
                   pg_get_serial_sequence('rewards_refund', 'id'))"""
        )
        assert [size for (size,) in cursor.fetchall()] == [1, 1]
