"""The test suite: real PostgreSQL and Redis (see tests/conftest.py).

DATABASE_URL and REDIS_URL default to the local services; the suite stops at
once, saying which service is missing, when one does not answer.
"""

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

from .base import *  # noqa: F403
from .base import REDIS_CACHE_OPTIONS, database_settings, env

SECRET_KEY = "test-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

DATABASES = {
    "default": database_settings(env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/loyalty"))
}
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["TEST"] = {"NAME": env("TEST_DATABASE_NAME", default="test_loyalty")}

# Redis database 1 by default, so a developer's running site (database 0) and
# the suite do not consume each other's messages.
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/1")
# `make test` runs the suite in several processes (pytest-xdist): each gets a database of its own
# (pytest-django adds _gw0, _gw1...) and the Redis database after the previous one's, so their
# brokers, caches and counters never meet. Servers and workers a test starts inherit the result
# (and the marker that says it is applied, so they do not move it again).
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw") and os.environ.get("LOYALTY_TEST_WORKER") != _XDIST_WORKER:
    _redis = urlsplit(REDIS_URL)
    _redis_db = int(_redis.path.strip("/") or 0) + int(_XDIST_WORKER[2:])
    REDIS_URL = urlunsplit(_redis._replace(path=f"/{_redis_db}"))
    os.environ["REDIS_URL"] = REDIS_URL
    os.environ["LOYALTY_TEST_WORKER"] = _XDIST_WORKER
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "loyalty-test",
        "OPTIONS": REDIS_CACHE_OPTIONS,
    }
}
# Rate-limit counters (accounts.security) live in Redis, which outlives a test run; a fresh
# namespace per run keeps one run's password resets from counting against the next.
RATE_LIMIT_NAMESPACE = f"run-{uuid.uuid4().hex[:8]}:"

# Fast hashing: the suite creates many users; production keeps the default.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In memory, unless EMAIL_URL is given (worker processes started by a test send to the
# test's SMTP server on loopback).
if "EMAIL_URL" not in env.ENVIRON:
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

# Static files straight from the app and static/ folders (no collectstatic).
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# The suite must not depend on the hour it runs at: no quiet hours unless a test sets them
# (the real Celery workers the tests start read this too).
CAMPAIGN_QUIET_HOURS = tuple(env.list("CAMPAIGN_QUIET_HOURS", cast=int, default=[0, 0]))
