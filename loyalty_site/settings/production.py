"""Production: PostgreSQL, Redis, gunicorn behind a TLS-terminating proxy.

Required: SECRET_KEY, DATABASE_URL, REDIS_URL, ALLOWED_HOSTS. Passes
`python manage.py check --deploy --fail-level WARNING` (a test runs it).
"""

from .base import *  # noqa: F403
from .base import database_settings, env

# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key — no default.
SECRET_KEY = env("SECRET_KEY")
DEBUG = False
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
DATABASES = {"default": database_settings(env.db("DATABASE_URL"))}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
# TLS ends at the proxy, which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# /healthz is probed over plain HTTP by load balancers.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# The proxy in front of gunicorn appends the client's address to X-Forwarded-For; login
# lockouts (django-axes) count by that address. Set PROXY_COUNT to the number of proxies.
PROXY_COUNT = env.int("PROXY_COUNT", default=1)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Program admins must sign in to the admin with a TOTP code (accounts/two_factor.py).
STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS = env.bool("STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS", default=True)

# Hashed, compressed static files served by whitenoise.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
