"""A worker killed with SIGKILL in the middle of a 2,000-recipient send: after the sweeper
and a new worker, the SMTP server holds one message per treated recipient and never two.

The one loss campaigns/mail.py allows is the group whose "sent" marks PostgreSQL had
committed when the kill came, before the worker wrote those messages' final dots; the
test holds a loss, when the kill lands there, to exactly that group."""

import collections
import datetime as dt
import os
import signal
import time
import uuid

import pytest
from django.utils import timezone

from campaigns import delivery
from campaigns.models import Delivery
from tests.campaigns.sends import big_send, worker

RECIPIENTS = 2000


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.django_db(transaction=True)
def test_sigkill_mid_send_doubles_nothing_and_loses_at_most_the_group_in_flight(
    program, smtp_server, celery_app_real, settings
):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)
    settings.CAMPAIGN_FREQUENCY_CAP = 0
    campaign, treated = big_send(name="Big send", recipients=RECIPIENTS, prefix="K")
    assert 1700 <= len(treated) <= 1900
    queue = f"kill-test-{uuid.uuid4().hex[:8]}"

    first = worker(queue, settings.EMAIL_PORT)
    celery_app_real.send_task("campaigns.deliveries_send", kwargs={"budget_seconds": 300}, queue=queue)
    wait_for(lambda: len(smtp_server.messages) >= 400, 120, "the first worker to send 400 messages")
    killed_at = timezone.now()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    received_at_kill = len(smtp_server.messages)
    assert received_at_kill < len(treated), "the kill came too late to test anything"
    in_flight = Delivery.objects.filter(status=Delivery.Status.SENDING).count()

    assert delivery.deliveries_sweep(stuck_after=dt.timedelta(0)) == in_flight
    second = worker(queue, settings.EMAIL_PORT)
    try:
        celery_app_real.send_task("campaigns.deliveries_send", kwargs={"budget_seconds": 300}, queue=queue)
        wait_for(
            lambda: not Delivery.objects.filter(status__in=["pending", "sending"]).exists(),
            180,
            "the second worker to finish",
        )
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
    time.sleep(0.5)  # the SMTP server's handler has queued the last message
    per_recipient = collections.Counter(m["To"] for m in smtp_server.messages)
    assert set(per_recipient) <= treated, "nobody outside the treated group got the message"
    assert set(per_recipient.values()) == {1}, "nobody got it twice"
    assert Delivery.objects.filter(status="sent").count() == len(treated)
    lost = treated - set(per_recipient)
    if lost:
        marks = set(Delivery.objects.filter(customer__email__in=lost).values_list("sent_at", flat=True))
        marked_before_kill = Delivery.objects.filter(sent_at__lte=killed_at).order_by("-sent_at")
        last_mark_before_kill = marked_before_kill.values_list("sent_at", flat=True)[0]
        assert len(lost) <= settings.CAMPAIGN_SMTP_SESSIONS, f"more than one group lost: {sorted(lost)}"
        assert marks == {last_mark_before_kill}, (
            f"the lost messages {sorted(lost)} are not the group the killed worker had just committed"
        )
