"""Celery talks to the real Redis broker; beat entries point at real tasks."""

import pytest

from loyalty_site.celery import app
from loyalty_site.schedule import BEAT_SCHEDULE


def test_task_round_trip_through_redis_and_a_real_worker(celery_worker_real):
    result = app.send_task("loyalty_site.ping", args=["hello"])
    assert result.get(timeout=20) == "hello"


def test_task_enqueued_in_a_rolled_back_transaction_never_runs(celery_worker_real, transactional_db):
    from django.db import transaction

    from loyalty_site.celery import ping

    class Rollback(Exception):
        pass

    sent = []
    with pytest.raises(Rollback), transaction.atomic():
        sent.append(ping.delay_on_commit("never"))
        raise Rollback
    # delay_on_commit returns None: nothing was published for the rolled back work.
    assert sent == [None]


def test_every_beat_entry_resolves_to_a_registered_task():
    app.loader.import_default_modules()
    assert BEAT_SCHEDULE, "the beat schedule is empty"
    for name, entry in BEAT_SCHEDULE.items():
        assert entry["task"] in app.tasks, f"beat entry {name!r} names unknown task {entry['task']!r}"


def test_beat_heartbeat_runs_on_the_worker(celery_worker_real):
    from django.core.cache import cache

    from loyalty_site.celery import HEARTBEAT_CACHE_KEY

    cache.delete(HEARTBEAT_CACHE_KEY)
    task_name = BEAT_SCHEDULE["heartbeat"]["task"]
    app.send_task(task_name)
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and cache.get(HEARTBEAT_CACHE_KEY) is None:
        time.sleep(0.1)
    assert cache.get(HEARTBEAT_CACHE_KEY) is not None


def test_celery_is_configured_for_reliability():
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_time_limit and conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
