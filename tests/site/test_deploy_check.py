"""Production settings pass Django's deployment checklist."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args, **env_overrides):
    # The browser tests set DJANGO_ALLOW_ASYNC_UNSAFE in this process; a deployment does not.
    dropped = {"SECRET_KEY", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(DJANGO_SETTINGS_MODULE="loyalty_site.settings.production", **env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_production_settings_pass_check_deploy_at_warning_level():
    out = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="k" * 20 + "-prod-9f8e7d6c5b4a3210-zyxwvutsrqponmlk",
        ALLOWED_HOSTS="loyalty.example.com",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/loyalty",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_production_settings_refuse_to_start_without_a_secret_key():
    out = _manage(
        "check",
        ALLOWED_HOSTS="loyalty.example.com",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/loyalty",
    )
    assert out.returncode != 0
    assert "SECRET_KEY" in out.stderr
