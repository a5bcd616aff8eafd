"""Dispatch and delivery: holdouts, consent, the frequency cap, quiet hours, recurring
occurrences with two dispatchers, triggers, offers, retries, the sweeper, and
personalisation in five languages. Mail goes to a real SMTP server on loopback."""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import close_old_connections
from django.utils import timezone

from accounts.models import Customer
from campaigns import delivery
from campaigns.models import Audience, Campaign, Click, Delivery, InboxMessage, Unsubscribe
from campaigns.services import campaign_launch
from rewards.models import LedgerEntry, Promotion, Redemption
from rewards.services import customer_enroll, event_record, purchase_record
from tests.factories import CustomerFactory, RewardFactory, campaign_make

NOON_UTC = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def members(n, **fields):
    fields.setdefault("marketing_consent", True)
    fields.setdefault("time_zone", "Europe/Copenhagen")
    return [customer_enroll(customer=CustomerFactory(**fields))[0] for _ in range(n)]


def launch(campaign, now=NOON_UTC):
    campaign_launch(campaign=campaign)
    Campaign.objects.filter(pk=campaign.pk).update(launched_at=now - dt.timedelta(minutes=1))
    campaign.refresh_from_db()
    return campaign


def send_all(now=NOON_UTC):
    totals = {}
    while True:
        report = delivery.deliveries_send(now=now)
        for k, v in report.items():
            totals[k] = totals.get(k, 0) + v
        if not report["claimed"]:
            return totals


@pytest.fixture(autouse=True)
def campaign_settings(settings):
    settings.CAMPAIGN_FREQUENCY_CAP = 3
    settings.CAMPAIGN_QUIET_HOURS = (21, 8)
    settings.SITE_URL = "https://loyalty.example.com"


def test_a_campaign_reaches_each_treated_member_once_and_never_the_holdout(program, smtp_server):
    people = members(60)
    campaign = launch(campaign_make(name="Welcome back", holdout_percent=25))
    delivery.dispatch(now=NOON_UTC)
    delivery.dispatch(now=NOON_UTC)  # a second pass adds nothing
    holdout = set(
        Audience.objects.filter(campaign=campaign, holdout=True).values_list("customer_id", flat=True)
    )
    assert 5 <= len(holdout) <= 25
    assert Audience.objects.filter(campaign=campaign).count() == 60
    report = send_all()
    assert report["sent"] == 60 - len(holdout)
    received = [m["To"] for m in smtp_server.messages]
    assert len(received) == len(set(received)) == 60 - len(holdout)
    assert not {c.email for c in people if c.pk in holdout} & set(received)
    message = smtp_server.messages[0]
    assert message["List-Unsubscribe"].strip().startswith("<https://loyalty.example.com/m/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Message-ID"].startswith("<delivery-")
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.FINISHED


def test_marketing_goes_only_to_customers_who_consented(program, smtp_server):
    yes = members(2)
    no = members(2, marketing_consent=False)
    launch(campaign_make())
    delivery.dispatch(now=NOON_UTC)
    send_all()
    assert {m["To"] for m in smtp_server.messages} == {c.email for c in yes}
    reasons = Delivery.objects.filter(customer__in=no).values_list("status", "reason")
    assert set(reasons) == {("suppressed", "no_consent")}


def test_the_frequency_cap_holds_across_campaigns(program, smtp_server, settings):
    settings.CAMPAIGN_FREQUENCY_CAP = 2
    (member,) = members(1)
    for i in range(3):
        launch(campaign_make(name=f"C{i}"))
    delivery.dispatch(now=NOON_UTC)
    send_all()
    assert len(smtp_server.messages) == 2
    assert Delivery.objects.filter(status="suppressed", reason="frequency_cap").count() == 1


def test_quiet_hours_hold_messages_until_morning_where_the_customer_lives(program, smtp_server):
    (bangkok,) = members(1, time_zone="Asia/Bangkok")  # 12:00 UTC is 19:00 in Bangkok
    (copenhagen,) = members(1)
    launch(campaign_make())
    late = dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.UTC)  # 22:00 in Bangkok, 16:00 in Copenhagen
    delivery.dispatch(now=late)
    send_all(now=late)
    assert [m["To"] for m in smtp_server.messages] == [copenhagen.email]
    held = Delivery.objects.get(customer=bangkok)
    assert held.status == "pending" and held.reason == "quiet_hours"
    assert held.due_at == dt.datetime(2026, 11, 24, 1, 0, tzinfo=dt.UTC)  # 08:00 in Bangkok
    send_all(now=held.due_at)
    assert len(smtp_server.messages) == 2


@pytest.mark.django_db(transaction=True)
def test_a_recurring_campaign_sends_once_per_occurrence_even_with_two_dispatchers(program, smtp_server):
    members(30)
    campaign = campaign_make(schedule="recurring", recur_weekdays="0", recur_time=dt.time(9, 0))
    launch(campaign, now=dt.datetime(2026, 11, 16, 7, 0, tzinfo=dt.UTC))
    monday = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)  # Monday 10:30 in Copenhagen
    barrier = threading.Barrier(2)
    errors = []

    def dispatcher():
        try:
            barrier.wait()
            delivery.dispatch(now=monday)
        except Exception as error:  # noqa: BLE001
            errors.append(error)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Delivery.objects.filter(campaign=campaign).count() == 30
    send_all(now=monday)
    delivery.dispatch(now=monday + dt.timedelta(hours=3))
    send_all(now=monday + dt.timedelta(hours=3))
    assert len(smtp_server.messages) == 30
    next_monday = monday + dt.timedelta(days=7)
    delivery.dispatch(now=next_monday)
    send_all(now=next_monday)
    assert len(smtp_server.messages) == 60
    assert set(Delivery.objects.values_list("occurrence", flat=True)) == {
        "2026-11-23T09:00+01:00",
        "2026-11-30T09:00+01:00",
    }


def test_an_event_triggers_a_message_showing_the_basket(program, integration, smtp_server, settings):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)  # it runs at the real time of day
    (member,) = members(1)
    campaign = launch(
        campaign_make(
            schedule="triggered",
            trigger="event",
            trigger_event_type="cart_abandoned",
            contents={"en": ("Forgot something, {{ first_name }}?", "In your basket:\n{{ basket }}")},
        )
    )
    event_record(
        integration=integration,
        external_id="cart-1",
        customer_ref=member.external_ref,
        event_type="cart_abandoned",
        data={"items": [{"name": "Rye bread", "quantity": 2}, {"name": "Latte", "quantity": 1}]},
    )
    delivery.dispatch(now=timezone.now())
    delivery.dispatch(now=timezone.now())
    send_all(now=timezone.now())
    (message,) = smtp_server.messages
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert "2 × Rye bread" in body and "1 × Latte" in body
    assert Delivery.objects.get(campaign=campaign).occurrence.startswith("event:")


def test_day_triggers_birthday_and_days_after_the_last_purchase(program, integration, smtp_server):
    today = timezone.localdate()
    (birthday,) = members(1, birthday=today.replace(year=1990))
    (lapsed,) = members(1)
    purchase_record(
        integration=integration,
        external_id="p1",
        customer_ref=lapsed.external_ref,
        amount=Decimal("10"),
        currency="DKK",
        # 30 calendar days ago in the program's time zone (30 × 24 h before now lands on
        # another date in the hour before midnight when a DST change lies in between).
        occurred_at=dt.datetime.combine(
            today - dt.timedelta(days=30), dt.time(12), tzinfo=timezone.get_current_timezone()
        ),
    )
    launch(campaign_make(name="Birthday", schedule="triggered", trigger="birthday"), now=timezone.now())
    launch(
        campaign_make(name="Miss you", schedule="triggered", trigger="after_last_purchase", trigger_days=30),
        now=timezone.now(),
    )
    now = timezone.now()
    delivery.dispatch(now=now)
    delivery.dispatch(now=now)
    assert set(Delivery.objects.values_list("campaign__name", "customer_id")) == {
        ("Birthday", birthday.pk),
        ("Miss you", lapsed.pk),
    }


def test_in_app_messages_land_in_the_inbox_exactly_once(program):
    (member,) = members(1)
    launch(campaign_make(channel="in_app"))
    delivery.dispatch(now=NOON_UTC)
    send_all()
    row = Delivery.objects.get()
    # A worker that died after writing the message: the sweeper returns the row, it runs again.
    Delivery.objects.filter(pk=row.pk).update(status="sending", claimed_at=NOON_UTC - dt.timedelta(hours=1))
    assert delivery.deliveries_sweep(now=NOON_UTC) == 1
    send_all()
    assert InboxMessage.objects.filter(customer=member).count() == 1


def test_failures_retry_with_backoff_then_fail_with_the_reason(program, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 1, 1  # nothing listens
    members(1)
    launch(campaign_make())
    delivery.dispatch(now=NOON_UTC)
    now = NOON_UTC
    for attempt in range(1, delivery.MAX_ATTEMPTS + 1):
        report = delivery.deliveries_send(now=now)
        assert report["failed"] == 1
        row = Delivery.objects.get()
        assert row.attempts == attempt
        if attempt < delivery.MAX_ATTEMPTS:
            assert row.status == "pending" and row.due_at == now + dt.timedelta(
                seconds=30 * 2 ** (attempt - 1)
            )
            assert delivery.deliveries_send(now=now)["claimed"] == 0  # not before its time
            now = row.due_at
    assert row.status == "failed" and "ConnectionRefused" in row.reason


def test_personalisation_in_each_language(program, smtp_server):
    RewardFactory(name="Cinnamon bun", cost_points=40, translations={"da": {"name": "Kanelsnegl"}})
    texts = {
        "en": (
            "Hi {{ first_name }}",
            "{{ points_balance }} points, {{ tier }}, next {{ next_tier }} in {{ to_next_tier }};"
            " try {{ recommended_reward }}",
        ),
        "da": (
            "Hej {{ first_name }}",
            "{{ points_balance }} point, {{ tier }}, {{ to_next_tier }}; {{ recommended_reward }}",
        ),
        "sv": ("Hej {{ first_name }}", "{{ points_balance }} poäng, {{ to_next_tier }}"),
        "ru": ("Привет, {{ first_name }}", "{{ points_balance }} баллов, {{ to_next_tier }}"),
        "th": ("สวัสดี {{ first_name }}", "{{ points_balance }} คะแนน {{ to_next_tier }}"),
    }
    launch(campaign_make(contents=texts))
    for language in texts:
        (c,) = members(1, language=language, first_name=f"Name-{language}")
        customer_enroll(customer=c)
        from rewards.services import bonus_award

        bonus_award(customer=c, points=1200, key=f"t-{language}", name="test")
    delivery.dispatch(now=NOON_UTC)
    send_all()
    bodies = {m["Subject"]: m.get_body(preferencelist=("plain",)).get_content() for m in smtp_server.messages}
    assert bodies["Hi Name-en"].startswith(
        "1,250 points, Bronze, next Silver in 2,000.00 DKK; try Cinnamon bun"
    )
    assert bodies["Hej Name-da"].startswith("1.250 point, Bronze, 2.000,00 DKK; Kanelsnegl")
    assert bodies["Hej Name-sv"].startswith("1\xa0250 poäng, 2\xa0000,00 DKK")
    assert bodies["Привет, Name-ru"].startswith("1\xa0250 баллов, 2\xa0000,00 DKK")
    assert bodies["สวัสดี Name-th"].startswith("1,250 คะแนน 2,000.00 DKK")


def test_the_default_language_is_used_when_the_customers_is_missing(program, smtp_server):
    members(1, language="th")
    launch(campaign_make(contents={"en": ("Hello", "Body")}))
    delivery.dispatch(now=NOON_UTC)
    send_all()
    assert smtp_server.messages[0]["Subject"] == "Hello"


def test_offers_reach_the_treated_only(program, smtp_server):
    people = members(20)
    reward = RewardFactory(cost_points=500, stock=100)
    start = timezone.now()
    multiplier = launch(
        campaign_make(
            name="Double",
            holdout_percent=50,
            offer="multiplier",
            offer_multiplier=Decimal("2"),
            offer_starts_at=start,
            offer_ends_at=start + dt.timedelta(days=7),
        )
    )
    gift = launch(campaign_make(name="Gift", offer="points", offer_points=100))
    voucher = launch(campaign_make(name="Voucher", offer="voucher", offer_reward=reward))
    delivery.dispatch(now=NOON_UTC)
    send_all()
    treated = set(
        Audience.objects.filter(campaign=multiplier, holdout=False).values_list("customer_id", flat=True)
    )
    promotion = Promotion.objects.get(source=f"campaign:{multiplier.pk}")
    assert set(promotion.customers.values_list("pk", flat=True)) == treated
    assert LedgerEntry.objects.filter(idempotency_key__startswith=f"campaign:{gift.pk}:").count() == len(
        people
    )
    assert (
        Redemption.objects.filter(idempotency_key__startswith=f"campaign:{voucher.pk}:", points=0).count()
        == 20
    )


def test_unsubscribe_link_and_tracked_clicks(client, program, smtp_server):
    (member,) = members(1)
    launch(campaign_make(contents={"en": ("Hi", "See https://shop.example.com/offers now")}))
    delivery.dispatch(now=NOON_UTC)
    send_all()
    body = smtp_server.messages[0].get_body(preferencelist=("plain",)).get_content()
    tracked = next(w for w in body.split() if "/m/c/" in w)
    response = client.get(tracked.replace("https://loyalty.example.com", ""))
    assert response.status_code == 302 and response["Location"] == "https://shop.example.com/offers"
    assert Click.objects.count() == 1
    header = smtp_server.messages[0]["List-Unsubscribe"].strip().strip("<>")
    unsubscribe = header.replace("https://loyalty.example.com", "")
    assert client.get(unsubscribe).status_code == 200
    client.post(unsubscribe)  # the one-click POST of a mail client: no session, no CSRF token
    member.refresh_from_db()
    assert not member.marketing_consent and Unsubscribe.objects.count() == 1
    assert client.get("/m/c/forged/").status_code == 404


def test_launch_refuses_an_incomplete_campaign(program):
    from rewards.errors import DomainError

    campaign = campaign_make(schedule="at", contents={"en": ("Hi {% load x %}", "Body")})
    with pytest.raises(DomainError) as error:
        campaign_launch(campaign=campaign)
    assert "date and time" in error.value.message and "Only {{ fields }}" in error.value.message
    assert Customer.objects.count() == 0


def test_the_holdout_drawn_in_sql_is_the_one_python_draws(program):
    from campaigns.delivery import _holdout_of

    Customer.objects.bulk_create(Customer(external_ref=f"H{i}", marketing_consent=True) for i in range(500))
    campaign = launch(campaign_make(holdout_percent=30, conditions=[{"field": "consent"}]))
    delivery.dispatch(now=NOON_UTC)
    drawn = dict(Audience.objects.filter(campaign=campaign).values_list("customer_id", "holdout"))
    assert len(drawn) == 500
    assert drawn == {cid: _holdout_of(campaign, cid) for cid in drawn}
    assert 100 < sum(drawn.values()) < 200
    assert Delivery.objects.filter(campaign=campaign).count() == 500 - sum(drawn.values())
    assert len(set(Delivery.objects.values_list("token", flat=True))) == 500 - sum(drawn.values())


def test_large_segments_are_materialised_in_chunks_shared_by_dispatchers_and_workers(program, monkeypatch):
    monkeypatch.setattr(delivery, "FILL_CHUNK", 7)
    Customer.objects.bulk_create(Customer(external_ref=f"Z{i}", marketing_consent=True) for i in range(30))
    campaign = launch(campaign_make(conditions=[{"field": "consent"}]))
    report = delivery.dispatch(now=NOON_UTC)
    assert report["deliveries"] == 30  # the dispatcher's time budget covered every chunk
    occurrence = campaign.occurrences.get()
    assert occurrence.recipients == 30 and occurrence.materialised_at is not None
    assert Campaign.objects.get(pk=campaign.pk).status == "finished"

    other = launch(campaign_make(name="Paused midway", conditions=[{"field": "consent"}]))
    delivery._occurrence_open(other, "once", NOON_UTC)
    assert delivery.occurrences_fill(now=NOON_UTC, budget_seconds=0) == 7  # one chunk, then out of time
    Campaign.objects.filter(pk=other.pk).update(status="paused")
    assert delivery.occurrences_fill(now=NOON_UTC) == 0
    Campaign.objects.filter(pk=other.pk).update(status="active")
    assert delivery.occurrences_fill(now=NOON_UTC) == 23
    assert Delivery.objects.filter(campaign=other).count() == 30
