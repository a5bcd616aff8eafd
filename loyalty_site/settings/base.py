"""Settings shared by every environment.

Every value that differs between machines is read from the environment
(https://django-environ.readthedocs.io/). Environment-specific modules
(dev, test, production) import this one and override what they must.
"""

from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
# Production overrides this with a required value; dev and test have their own.
SECRET_KEY = env("SECRET_KEY", default="insecure-dev-only-key-change-me-0123456789abcdefghijklmnop")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
# https://docs.djangoproject.com/en/5.2/ref/settings/#csrf-trusted-origins
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    # Login brute-force protection: https://django-axes.readthedocs.io/
    "axes",
    # Content-Security-Policy header (see "Security headers" below).
    "csp",
    # Two-factor sign-in (TOTP) for staff in the admin: https://django-otp-official.readthedocs.io/
    "django_otp",
    "django_otp.plugins.otp_totp",
    # The project's apps, in layer order: each may import only those above it.
    "accounts",
    "rewards",
    "analytics",
    "campaigns",
    # Wiring: management commands that span the apps (seed_demo), the beat schedule.
    "loyalty_site",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    # PostgreSQL unreachable: a calm 503 page (JSON under /api/) with Retry-After, not a 500.
    # Failures inside other middleware (a session load) reach the same answer through
    # handler500 in urls.py.
    "loyalty_site.outages.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified(): signed in with a TOTP code (django-otp), then the admin's
    # two-factor rules (accounts/two_factor.py).
    "django_otp.middleware.OTPMiddleware",
    "accounts.two_factor.StaffTwoFactorMiddleware",
    # A signed-in member's profile language and time zone win over the browser's.
    "accounts.middleware.MemberPreferencesMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a lockout into its own response.
    "axes.middleware.AxesMiddleware",
]
# The integration API (/api/v1/: the shops' systems, a bearer token each, JSON) runs through a
# stack of its own (loyalty_site/wsgi.py): the same headers, outage answer and language as the
# pages, without what only a browser session uses (static files, sessions, CSRF, logins, staff
# two-factor, member preferences, messages, login lockouts), which cost a tenth of a purchase's
# CPU. The test client runs MIDDLEWARE; tests/site/test_api_lane.py runs the site's WSGI app.
API_PATH_PREFIX = "/api/v1/"
API_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The same policy as CSPMiddleware's, built once (JSON answers carry no nonce).
    "loyalty_site.middleware.ApiContentSecurityPolicyMiddleware",
    "loyalty_site.outages.DatabaseUnavailableMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "loyalty_site.urls"
WSGI_APPLICATION = "loyalty_site.wsgi.application"
ASGI_APPLICATION = "loyalty_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "loyalty_site.context_processors.program",
                "loyalty_site.context_processors.member",
            ],
        },
    },
]

# https://django-environ.readthedocs.io/en/latest/types.html#environ-env-db-url


def database_settings(database: dict) -> dict:
    """What every environment adds to its DATABASE_URL.

    PostgreSQL: psycopg's prepared statements switched on, with a threshold no statement
    reaches by repetition, so only the statements that ask for it are prepared (the purchase
    path, rewards/prepared.py: planned once per connection instead of on every purchase).
    A transaction-mode pooler that cannot carry prepared statements (PgBouncer before 1.21, or
    without max_prepared_statements): DATABASE_PREPARED_STATEMENTS=False.
    https://www.psycopg.org/psycopg3/docs/advanced/prepare.html
    https://docs.djangoproject.com/en/5.2/ref/databases/#server-side-parameters-binding
    """
    if "postgresql" in database["ENGINE"] and env.bool("DATABASE_PREPARED_STATEMENTS", default=True):
        database.setdefault("OPTIONS", {}).setdefault("prepare_threshold", 2**31 - 1)
    return database


DATABASES = {
    "default": database_settings(
        env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/loyalty")
    ),
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Persistent connections: one per gunicorn worker thread, checked before reuse.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Members sign in with their email address on the portal; staff use the admin's own login.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "portal-home"
LOGOUT_REDIRECT_URL = "home"
# https://django-axes.readthedocs.io/en/latest/4_configuration.html
# The backend comes first so a locked-out account or address is refused before any check.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Locked after 5 failures per account or per address, for an hour.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=1.0)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"
# The client's address: REMOTE_ADDR, or X-Forwarded-For as set by PROXY_COUNT trusted proxies.
AXES_CLIENT_IP_CALLABLE = "accounts.security.client_ip"
PROXY_COUNT = env.int("PROXY_COUNT", default=0)
# Email confirmation and password reset links stay valid for three days.
PASSWORD_RESET_TIMEOUT = 3 * 24 * 60 * 60
# The largest request body accepted (a batch of 1,000 purchases with line items fits).
# https://docs.djangoproject.com/en/5.2/ref/settings/#data-upload-max-memory-size
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Security headers -------------------------------------------------------
# Content-Security-Policy, by django-csp: https://django-csp.readthedocs.io/en/latest/configuration.html
# Everything from our own origin only; no inline script, style or event handler anywhere (a
# template that truly needs an inline <script> gives it nonce="{{ request.csp_nonce }}");
# the QR codes are inline SVG elements, which img-src does not govern. Django's own headers
# (nosniff, Referrer-Policy same-origin, X-Frame-Options DENY, Cross-Origin-Opener-Policy)
# are on by default; HSTS and secure cookies are in production.py.
CONTENT_SECURITY_POLICY = {
    # Swagger UI (drf-spectacular) renders an inline <script> and <style> without a nonce.
    # Until its view gets a per-view policy (SECURITY.md), the API docs page goes without.
    "EXCLUDE_URL_PREFIXES": ["/api/docs/"],
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- Internationalisation -------------------------------------------------
# https://docs.djangoproject.com/en/5.2/topics/i18n/
LANGUAGE_CODE = "en"
LANGUAGES = [
    ("en", _("English")),
    ("da", _("Danish")),
    ("sv", _("Swedish")),
    ("ru", _("Russian")),
    ("th", _("Thai")),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
USE_TZ = True
TIME_ZONE = env("TIME_ZONE", default="Europe/Copenhagen")

# The program's currency: every amount the API accepts must be in it.
PROGRAM_CURRENCY = env("PROGRAM_CURRENCY", default="DKK")
PROGRAM_NAME = env("PROGRAM_NAME", default="Loyalty")

# --- Staff roles and two-factor sign-in ---------------------------------------
# The largest points adjustment (either sign) a Support member may make at once; program
# admins (permission accounts.adjust_points_unlimited) have no limit. See accounts/roles.py.
STAFF_ADJUST_LIMIT_SUPPORT = env.int("STAFF_ADJUST_LIMIT_SUPPORT", default=1000)
# On: program admins (and superusers) cannot use the admin until they have enrolled a TOTP
# device and signed in with a code. Production turns it on; staff with a device always need
# a code. https://django-otp-official.readthedocs.io/en/stable/overview.html
STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS = env.bool("STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS", default=False)


# The name authenticator apps show next to the code; the admin hides the devices' secret keys.
# https://django-otp-official.readthedocs.io/en/stable/overview.html#std-setting-OTP_TOTP_ISSUER
def _totp_issuer(device):
    from django.conf import settings

    return settings.PROGRAM_NAME  # read when used: dev and production set their own name


OTP_TOTP_ISSUER = _totp_issuer
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

# --- Analytics ----------------------------------------------------------------
# Per-customer scores (a row per shopper) are kept for the latest few full analytics runs only;
# pages and campaign segments read the latest. Older runs keep their metrics, cohorts and effects.
ANALYTICS_SCORE_RUNS_KEPT = env.int("ANALYTICS_SCORE_RUNS_KEPT", default=3)

# --- Campaigns ----------------------------------------------------------------
# The site's public address, for links in emails (tracked links, unsubscribe).
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000")
# At most this many marketing messages per customer in 7 days, across campaigns (0: no cap).
CAMPAIGN_FREQUENCY_CAP = env.int("CAMPAIGN_FREQUENCY_CAP", default=3)
# No marketing email between these hours in the customer's time zone (held, then sent).
CAMPAIGN_QUIET_HOURS = tuple(env.list("CAMPAIGN_QUIET_HOURS", cast=int, default=[21, 8]))
# Send tasks the dispatcher starts per pass (about one per worker process).
CAMPAIGN_SEND_TASKS = env.int("CAMPAIGN_SEND_TASKS", default=2)
# SMTP sessions each sending thread keeps open; one commit marks a message per session
# (campaigns/mail.py). Keep processes × threads × sessions under the relay's per-client
# connection limit (Postfix: smtpd_client_connection_count_limit, 50 by default).
CAMPAIGN_SMTP_SESSIONS = env.int("CAMPAIGN_SMTP_SESSIONS", default=16)

# --- Static and media -----------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(VAR_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Redis, cache ---------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Short socket timeouts: when Redis hangs instead of refusing (a dropped network), a cache
# call gives up in a second and the caller carries on (rate limits fail open) instead of the
# request hanging. https://redis.readthedocs.io/en/stable/connections.html
REDIS_CACHE_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 1}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "loyalty",
        "OPTIONS": REDIS_CACHE_OPTIONS,
    }
}

# --- Email ----------------------------------------------------------------
# https://django-environ.readthedocs.io/en/latest/types.html#environ-env-email-url
# e.g. smtp://user:password@mail.example.com:587/?tls=True ; consolemail:// ; filemail://
vars().update(env.email_url("EMAIL_URL", default="smtp://127.0.0.1:25"))
# Who receives operational alerts (ledger check failures): a comma-separated list of addresses.
ADMINS = [(address, address) for address in env.list("ADMINS", default=[])]
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Loyalty <loyalty@localhost>")
SERVER_EMAIL = env("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

# --- Celery ---------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# Our tasks are written to be safe to repeat (they take ids and call idempotent
# services), so a message is acknowledged only after the task finished, and a
# worker that dies mid-task gives its message back to the queue.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Hard and soft time limits for every task; long work is split into batches.
CELERY_TASK_TIME_LIMIT = 30 * 60
CELERY_TASK_SOFT_TIME_LIMIT = 25 * 60
# The visibility timeout must exceed the longest task, or Redis redelivers a
# message that is still being worked on.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * 60 * 60}
# When the worker loses the broker (Redis restarted), a task running under acks_late can no
# longer be acknowledged: its message stays in Redis and is delivered again, so the task runs
# again whatever this one does. Stop it at once (its transaction rolls back; rows it claimed as
# "sending" are swept) instead of finishing work that will be repeated: our tasks are safe to
# repeat, and this way the work is done by the redelivered copy alone. Celery 5.x defaults to
# False, warns about it on every connection loss, and turns it on by default in 6.0; pinned so
# that the behaviour after a Redis restart is chosen here, not by an upgrade.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Retry the broker at startup and after a loss (both Celery's defaults today; the first is
# decided by broker_connection_retry alone until 6.0, with a warning when that one is off).
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 24 * 60 * 60
CELERY_TIMEZONE = TIME_ZONE
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# django-celery-beat keeps schedules in the database so staff can edit them.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat entries: shipped in code, synced to the database by beat on start.
from loyalty_site.schedule import BEAT_SCHEDULE as CELERY_BEAT_SCHEDULE  # noqa: E402,F401

# --- REST framework and the OpenAPI schema --------------------------------
# Requests per minute per integration token (0: no limit); past it, 429 with Retry-After
# (rewards.api.IntegrationRateThrottle). Set it to what your busiest integration needs.
API_RATE_LIMIT_PER_MINUTE = env.int("API_RATE_LIMIT_PER_MINUTE", default=20000)
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["rewards.authentication.IntegrationTokenAuthentication"],
    "EXCEPTION_HANDLER": "rewards.api_errors.api_exception_handler",
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Loyalty integration API",
    "DESCRIPTION": (
        "Purchases, refunds, redemptions and customer reads for point-of-sale and "
        "web-shop integrations. Authenticate with `Authorization: Bearer <token>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Serve Swagger UI from the drf-spectacular-sidecar package, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Every handler masks tokens and passwords that a message might carry (loyalty_site/log_filters.py).
    "filters": {"secrets": {"()": "loyalty_site.log_filters.SecretsFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["secrets"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per login attempt is noise; lockouts are still logged (warnings).
        "axes": {"level": "WARNING"},
        "mail.log": {"level": "WARNING"},
    },
}
