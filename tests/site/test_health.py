"""/healthz answers 200 on the real services and 503 naming what failed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import django, json
django.setup()
from django.test import Client
r = Client().get("/healthz")
print(json.dumps({"status": r.status_code, "body": r.json(), "retry": r.get("Retry-After")}))
"""


def _healthz_in_subprocess(**env_overrides):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "loyalty_site.settings.test", **env_overrides}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.django_db
def test_healthz_is_200_when_database_and_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True


def test_healthz_is_503_naming_the_database_when_it_points_nowhere():
    result = _healthz_in_subprocess(DATABASE_URL="postgres://nobody@127.0.0.1:1/nowhere")
    assert result["status"] == 503
    assert result["body"]["failed"] == ["database"]
    assert result["retry"]


@pytest.mark.django_db
def test_healthz_is_503_naming_the_broker_when_it_points_nowhere():
    from django.db import connection

    db = connection.settings_dict
    database_url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    result = _healthz_in_subprocess(DATABASE_URL=database_url, CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert result["status"] == 503
    assert result["body"]["failed"] == ["broker"]
