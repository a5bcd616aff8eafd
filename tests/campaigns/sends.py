"""What the tests of large sends under failure share: a campaign to N consenting customers,
launched and filled, and a real Celery worker process on the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.db import connection

from accounts.models import Customer
from campaigns import delivery
from campaigns.models import Audience, Campaign
from campaigns.services import campaign_launch
from tests.factories import campaign_make

ROOT = Path(__file__).resolve().parents[2]


def big_send(*, name: str, recipients: int, prefix: str) -> tuple[Campaign, set[str]]:
    """A launched campaign (10 % holdout) to `recipients` consenting customers, its deliveries
    created; and the addresses of the treated ones."""
    Customer.objects.bulk_create(
        Customer(
            external_ref=f"{prefix}{i:05d}",
            email=f"{prefix.lower()}{i:05d}@example.com",
            marketing_consent=True,
            first_name=prefix,
        )
        for i in range(recipients)
    )
    campaign = campaign_make(
        name=name, holdout_percent=10, conditions=[{"field": "consent"}], contents={"en": ("Hi", "Body")}
    )
    campaign_launch(campaign=campaign)
    delivery.dispatch()
    treated = set(
        Audience.objects.filter(campaign=campaign, holdout=False).values_list("customer__email", flat=True)
    )
    return campaign, treated


def worker(queue: str, smtp_port: int, broker_url: str | None = None) -> subprocess.Popen:
    """A real Celery worker process on the test database, sending to the test's SMTP server
    (and taking its tasks from `broker_url` when given)."""
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_site.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
        "EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
        "SITE_URL": "https://loyalty.example.com",
    }
    if broker_url:
        env.update(REDIS_URL=broker_url, CELERY_BROKER_URL=broker_url, CELERY_RESULT_BACKEND=broker_url)
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
