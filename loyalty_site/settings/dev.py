"""The demo and local development: no server needed.

SQLite under var/ and kombu's filesystem transport under var/broker stand in for
PostgreSQL and Redis, so `make demo` runs web, worker and beat on a bare machine.
Any variable set in the environment still wins (point DATABASE_URL at
PostgreSQL to develop against it).
"""

from .base import *  # noqa: F403
from .base import VAR_DIR, env

DEBUG = env.bool("DEBUG", default=True)
# The demo shop (see rewards/demo.py).
PROGRAM_NAME = env("PROGRAM_NAME", default="Bønne & Brød")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

VAR_DIR.mkdir(exist_ok=True)
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'demo.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share the file: WAL lets readers run beside the one
    # writer, IMMEDIATE transactions take the write lock up front instead of
    # failing on upgrade, and a writer waits up to 20 s for the lock.
    # https://docs.djangoproject.com/en/5.2/ref/databases/#sqlite-transaction-behavior
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

# kombu's filesystem transport: messages are files under var/broker.
# https://docs.celeryq.dev/projects/kombu/en/stable/reference/kombu.transport.filesystem.html
_BROKER_DIR = VAR_DIR / "broker"
for _sub in ("queue", "processed", "control"):
    (_BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "data_folder_in": str(_BROKER_DIR / "queue"),
    "data_folder_out": str(_BROKER_DIR / "queue"),
    "processed_folder": str(_BROKER_DIR / "processed"),
    "store_processed": False,
    "control_folder": str(_BROKER_DIR / "control"),
}
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=f"file://{VAR_DIR / 'results'}")
(VAR_DIR / "results").mkdir(exist_ok=True)

# Shared between the web and worker processes without Redis.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "cache"),
    }
}

# Emails of the demo land as files under var/mail, one per message.
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = str(VAR_DIR / "mail")

# Static files straight from the app and static/ folders (no collectstatic).
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
