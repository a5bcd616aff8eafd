"""`make demo` runs on SQLite with the dev settings (no server needed), while the rest of the
suite runs on PostgreSQL: raw SQL written for PostgreSQL alone would break the demo unseen.
This runs the demo's own steps (migrate, seed_demo) on a fresh SQLite file in a subprocess, then
records a purchase (twice: one is kept) and reads the customer through the API on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
import django
django.setup()
from rest_framework.test import APIClient
from accounts.models import Customer
from rewards.services import integration_token_create

_, token = integration_token_create(name="SQLite check")
client = APIClient()
client.credentials(HTTP_AUTHORIZATION="Bearer " + token)
member = Customer.objects.filter(enrolled_at__isnull=False).order_by("id").first()
body = {"customer": member.external_ref, "external_id": "sqlite-check-1", "amount": "250.00",
        "currency": "DKK", "occurred_at": "2026-01-05T10:00:00Z"}
first = client.post("/api/v1/purchases", body, format="json")
again = client.post("/api/v1/purchases", body, format="json")
read = client.get("/api/v1/customers/" + member.external_ref)
print(json.dumps({"first": first.status_code, "again": again.status_code, "read": read.status_code,
                  "points": first.json().get("points_earned"), "body": first.content.decode()[:500]}))
"""


def test_the_demo_migrates_seeds_and_takes_purchases_on_sqlite(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_site.settings.dev",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "CELERY_BROKER_URL": "memory://",
        "ALLOWED_HOSTS": "testserver",
    }
    run = {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "timeout": 600}
    for command in (
        ["migrate", "--noinput"],
        ["seed_demo", "--customers", "12", "--months", "2", "--seed", "3"],
    ):
        done = subprocess.run([sys.executable, "manage.py", *command], **run)
        assert done.returncode == 0, f"{command[0]} failed on SQLite:\n{done.stderr[-3000:]}"
    done = subprocess.run([sys.executable, "-c", SCRIPT], **run)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers["first"] == 201, answers["body"]
    assert answers["again"] in (200, 201)
    assert answers["read"] == 200
    assert answers["points"] > 0
