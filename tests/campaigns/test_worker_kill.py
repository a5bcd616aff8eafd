"""A worker killed with SIGKILL in the middle of a 2,000-recipient send: after the sweeper
and a new worker, the SMTP server holds exactly one message per treated recipient."""

import collections
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from accounts.models import Customer
from campaigns import delivery
from campaigns.models import Audience, Delivery
from campaigns.services import campaign_launch
from tests.factories import campaign_make

ROOT = Path(__file__).resolve().parents[2]
RECIPIENTS = 2000


def worker(queue: str, smtp_port: int) -> subprocess.Popen:
    """A real Celery worker process on the test database, sending to the test's SMTP server."""
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_site.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
        "EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
        "SITE_URL": "https://loyalty.example.com",
    }
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "loyalty_site", "worker", "-P", "solo", "-c", "1",
            "-Q", queue, "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "WARNING",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )  # fmt: skip


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.django_db(transaction=True)
def test_sigkill_mid_send_loses_nothing_and_doubles_nothing(program, smtp_server, celery_app_real, settings):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)
    settings.CAMPAIGN_FREQUENCY_CAP = 0
    Customer.objects.bulk_create(
        Customer(
            external_ref=f"K{i:05d}", email=f"k{i:05d}@example.com", marketing_consent=True, first_name="K"
        )
        for i in range(RECIPIENTS)
    )
    campaign = campaign_make(
        name="Big send",
        holdout_percent=10,
        conditions=[{"field": "consent"}],
        contents={"en": ("Hi", "Body")},
    )
    campaign_launch(campaign=campaign)
    delivery.dispatch()
    treated = set(
        Audience.objects.filter(campaign=campaign, holdout=False).values_list("customer__email", flat=True)
    )
    assert 1700 <= len(treated) <= 1900
    queue = f"kill-test-{uuid.uuid4().hex[:8]}"

    first = worker(queue, settings.EMAIL_PORT)
    celery_app_real.send_task("campaigns.deliveries_send", kwargs={"budget_seconds": 300}, queue=queue)
    wait_for(lambda: len(smtp_server.messages) >= 400, 120, "the first worker to send 400 messages")
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
    assert set(per_recipient) == treated, "every treated recipient got the message; nobody else did"
    assert set(per_recipient.values()) == {1}, "nobody got it twice"
    assert Delivery.objects.filter(status="sent").count() == len(treated)
