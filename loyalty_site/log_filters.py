"""A last line of defence for the logs: secrets are masked before a line is written.

The code logs no token, password or session (tests/site/test_secrets.py proves it for the
API and the sign-in pages); this filter, on every handler in settings.LOGGING, masks what a
future log call or an exception message might still carry: API tokens (lyt_...), the value
of an Authorization header, a password reset link's token, and password=, token=, secret=
pairs.
"""

import logging
import re

MASK = "[redacted]"
PATTERNS = [
    # The API's tokens: "lyt_" and 43 URL-safe characters (rewards.services.integration_token_create).
    (re.compile(r"lyt_[A-Za-z0-9_\-]{8,}"), f"lyt_{MASK}"),
    # An Authorization header's credentials, whatever the scheme.
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=\-]{8,}"), rf"\1\2{MASK}"),
    # A password reset link's token in a path (Django swaps it for "set-password" at once).
    (re.compile(r"(/password-reset/[^/\s]+/)(?!set-password)[^/\s]+"), rf"\1{MASK}"),
    # password=..., "password": "...", csrfmiddlewaretoken=..., secret: ..., in forms, JSON or reprs.
    (
        re.compile(r"(?i)((?:password\d?|passwd|secret|api_key|token)[\"']?\s*[:=]\s*[\"']?)[^\s&\"',;}]+"),
        rf"\1{MASK}",
    ),
]


# A session's key, as the SQL log (DEBUG = True) shows the session's reads and writes.
SESSION_SQL = re.compile(r"django_session", re.IGNORECASE)
SESSION_KEY = re.compile(r"'[a-z0-9]{32}'")


def redact(text: str) -> str:
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    if SESSION_SQL.search(text):
        text = SESSION_KEY.sub(f"'{MASK}'", text)
    return text


class SecretsFilter(logging.Filter):
    """Masks secrets in a record's message and traceback; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
