"""Redis restarted in the middle of a campaign send: the broker goes away under a working
worker and comes back empty (CI runs Redis without persistence, so a restart loses every
queued and unacknowledged message). The worker reaches Redis through a TCP proxy the test
cuts and restores (tests/tcp_proxy.py); the test plays beat, handing out send tasks of one
batch each every second through the same proxy, as the dispatcher would.

Afterwards the SMTP server on loopback has exactly one message per treated recipient: the
deliveries are rows in PostgreSQL, claimed with SKIP LOCKED and marked sent, so what the
broker lost was only "there is work", which the next task finds again."""

from __future__ import annotations

import collections
import json
import os
import signal
import time
import uuid
from urllib.parse import urlsplit

import pytest
import redis

from campaigns.models import Delivery
from tests.campaigns.sends import big_send, worker
from tests.tcp_proxy import TCPProxy

RECIPIENTS = 1500


def forget_queue(client: redis.Redis, queue: str) -> int:
    """What a restart without persistence does to this queue: its waiting messages and the
    ones a worker holds unacknowledged are gone (kombu keeps those in `unacked`)."""
    lost = client.llen(queue)
    client.delete(queue)
    for tag, raw in client.hgetall("unacked").items():
        message = json.loads(raw)[0]
        if message.get("properties", {}).get("delivery_info", {}).get("routing_key") == queue:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
            lost += 1
    return lost


@pytest.mark.django_db(transaction=True)
def test_broker_restart_mid_send_loses_nothing_and_doubles_nothing(
    program, smtp_server, celery_app_real, settings
):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)
    settings.CAMPAIGN_FREQUENCY_CAP = 0
    campaign, treated = big_send(name="Restart send", recipients=RECIPIENTS, prefix="R")
    assert len(treated) > RECIPIENTS * 0.8

    target = urlsplit(settings.CELERY_BROKER_URL)
    proxy = TCPProxy(target.hostname or "127.0.0.1", target.port or 6379)
    broker_url = f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}"
    direct = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = f"restart-test-{uuid.uuid4().hex[:8]}"
    published = failed_publishes = 0

    def beat_tick() -> None:
        """Hand out a short send task through the proxy, as the dispatcher does; while the
        broker is away the publish fails, and beat simply tries again on its next tick."""
        nonlocal published, failed_publishes
        try:
            with celery_app_real.connection_for_write(url=broker_url) as conn:
                celery_app_real.send_task(
                    "campaigns.deliveries_send",
                    # One batch per task (the first always runs): the worker needs the broker
                    # to get on, whatever its speed.
                    kwargs={"budget_seconds": 0.01, "sessions": 2},
                    queue=queue,
                    connection=conn,
                    retry=False,
                )
            published += 1
        except Exception:  # kombu's OperationalError, redis-py's ConnectionError, ...
            failed_publishes += 1

    def run_beat_until(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while time.monotonic() < deadline:
            if predicate():
                return
            if time.monotonic() >= next_tick:
                beat_tick()
                next_tick = time.monotonic() + 1.0
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    process = worker(queue, settings.EMAIL_PORT, broker_url)
    try:
        run_beat_until(lambda: len(smtp_server.messages) >= 300, 180, "300 messages before the restart")
        proxy.cut()
        lost = forget_queue(direct, queue)
        at_cut = len(smtp_server.messages)
        # The task that was running finishes its batches (PostgreSQL and SMTP are still
        # there); then the worker waits for a broker that does not answer.
        settled = {"count": -1, "since": time.monotonic()}

        def sending_stopped() -> bool:
            count = len(smtp_server.messages)
            if count != settled["count"]:
                settled.update(count=count, since=time.monotonic())
            return time.monotonic() - settled["since"] > 3

        run_beat_until(sending_stopped, 60, "sending to stop while the broker is away")
        during_outage = len(smtp_server.messages)
        assert during_outage < len(treated), "the restart came too late to test anything"
        assert failed_publishes > 0, "beat's publishes reached no broker while it was away"

        proxy.restore()
        run_beat_until(
            lambda: (
                not Delivery.objects.filter(campaign=campaign, status__in=["pending", "sending"]).exists()
            ),
            240,
            "the worker to reconnect and finish the send",
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        proxy.close()
        direct.delete(queue)
    time.sleep(0.5)  # the SMTP server's handler has queued the last message

    per_recipient = collections.Counter(m["To"] for m in smtp_server.messages)
    assert set(per_recipient) == treated, "every treated recipient got the message; nobody else did"
    assert set(per_recipient.values()) == {1}, "nobody got it twice"
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == len(treated)
    print(
        f"messages at the cut {at_cut}, when sending stopped {during_outage}, of {len(treated)}; "
        f"broker messages lost in the restart {lost}; publishes {published}, failed {failed_publishes}"
    )
