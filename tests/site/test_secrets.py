"""Secrets: API tokens are stored only as hashes, voucher codes cannot be guessed, and no
token or password reaches the logs (and if one ever did, the log filter masks it)."""

from __future__ import annotations

import collections
import hashlib
import logging
import re
import string

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse
from rest_framework.test import APIClient

from loyalty_site.log_filters import SecretsFilter, redact
from rewards.services import VOUCHER_ALPHABET, integration_token_create, voucher_code_new
from tests.rewards.test_portal import PASSWORD, member_with_login

# --- Tokens --------------------------------------------------------------------------------


def rows_containing(text: str) -> list[str]:
    """Every table whose rows, read as text, contain `text` anywhere."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT count(*) FROM "{table}" AS t WHERE t::text LIKE %s', [f"%{text}%"])
            if cursor.fetchone()[0]:
                found.append(table)
    return found


def test_an_api_token_is_kept_only_as_its_hash(program):
    integration, token = integration_token_create(name="Till 7")
    assert re.fullmatch(r"lyt_[A-Za-z0-9_\-]{43}", token), "32 random bytes (256 bits), URL-safe"
    integration.refresh_from_db()
    assert integration.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token.startswith(integration.token_prefix) and len(integration.token_prefix) <= 10
    secret_part = token[len(integration.token_prefix) :]
    assert rows_containing(secret_part) == [], "the token itself is in no table"
    # It works, and a token that differs in one character does not.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/rewards").status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}")
    assert client.get("/api/v1/rewards").status_code == 401


def test_a_new_token_for_an_integration_voids_the_old_one(program):
    _, old = integration_token_create(name="Till 8")
    _, new = integration_token_create(name="Till 8")
    assert old != new
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {old}")
    assert client.get("/api/v1/rewards").status_code == 401


def test_voucher_codes_come_from_the_whole_alphabet_at_random():
    """12 characters from 32 = 60 bits. Sequential or time-based codes would repeat or leave
    most of the alphabet unused at some position; 4,000 random codes use every character at
    every position (a character missing somewhere: probability about 12·32·(31/32)^4000)."""
    codes = [voucher_code_new() for _ in range(4000)]
    assert len(set(codes)) == len(codes)
    raw = [code.replace("-", "") for code in codes]
    assert all(re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code) for code in codes)
    assert len(VOUCHER_ALPHABET) == 32 and not set("01IO") & set(VOUCHER_ALPHABET)
    for position in range(12):
        assert {r[position] for r in raw} == set(VOUCHER_ALPHABET), f"position {position}"
    # Neighbouring codes share no more characters than chance would (1 in 32 per position).
    same = sum(a == b for x, y in zip(raw, raw[1:], strict=False) for a, b in zip(x, y, strict=True))
    assert same < 12 * len(raw) / 32 * 1.5


# --- Logs ----------------------------------------------------------------------------------


def records_text(records) -> str:
    out = []
    for record in records:
        out.append(record.getMessage())
        if record.exc_info:
            out.append(logging.Formatter().formatException(record.exc_info))
        out.append(repr(getattr(record, "request", "")))
    return "\n".join(out)


@pytest.fixture
def all_logs(caplog):
    """Every record from every logger, SQL included (as DEBUG = True would log it), as the
    code wrote it: the masking filter of the site's handlers (which changes the record every
    handler sees) is set aside, so what is proven here is that nothing secret is logged."""
    caplog.set_level(logging.DEBUG)
    for name in ("axes", "django", "django.request", "django.db.backends", "rewards", "accounts"):
        caplog.set_level(logging.DEBUG, logger=name)
    masking = [
        (h, f) for h in logging.getLogger().handlers for f in h.filters if isinstance(f, SecretsFilter)
    ]
    for handler, mask in masking:
        handler.removeFilter(mask)
    connection.force_debug_cursor = True
    yield caplog
    connection.force_debug_cursor = False
    for handler, mask in masking:
        handler.addFilter(mask)


def test_api_requests_with_a_token_log_nothing_secret(program, all_logs):
    _, token = integration_token_create(name="Till 9")
    forged = "lyt_" + string.ascii_letters[:43]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/rewards").status_code == 200
    assert client.post("/api/v1/purchases", {"external_id": 1}, format="json").status_code == 400
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert client.get("/api/v1/rewards").status_code == 401

    logged = records_text(all_logs.records)
    assert "token_hash" in logged, "the SQL of the token lookup was captured"
    assert "Unauthorized: /api/v1/rewards" in logged, "the 401 was logged"
    assert token[4:] not in logged and forged[4:] not in logged


def test_signing_in_and_resetting_a_password_log_no_password(client, program, all_logs):
    member_with_login(email="log.check@example.com")
    wrong = "Wrong-horse-77-battery"
    assert (
        client.post(reverse("login"), {"username": "log.check@example.com", "password": wrong}).status_code
        == 200
    )
    response = client.post(reverse("login"), {"username": "log.check@example.com", "password": PASSWORD})
    assert response.status_code == 302
    client.post(reverse("password_reset"), {"email": "log.check@example.com"})

    logged = records_text(all_logs.records)
    assert "log.check@example.com" in logged, "the sign-in's queries and axes' records were captured"
    assert wrong not in logged and PASSWORD not in logged
    # The session's key shows only in the SQL log (which production does not write), masked
    # there by the filter as by every handler.
    session = client.cookies["sessionid"].value
    assert session not in records_text(r for r in all_logs.records if r.name != "django.db.backends")
    sql = [r for r in all_logs.records if r.name == "django.db.backends" and session in r.getMessage()]
    assert sql, "the session lookup's SQL was captured"
    for record in sql:
        SecretsFilter().filter(record)
        assert session not in record.getMessage()


# --- The filter, the last line of defence ------------------------------------------------------


def test_every_log_handler_masks_secrets():
    handlers = settings.LOGGING["handlers"]
    assert handlers and all("secrets" in h.get("filters", []) for h in handlers.values())
    root_filters = [f for h in logging.getLogger().handlers for f in h.filters]
    assert any(isinstance(f, SecretsFilter) for f in root_filters)


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("Authorization: Bearer lyt_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg", "Zm9vYmFyYmF6"),
        ("headers={'HTTP_AUTHORIZATION': 'Bearer abcdefghijklmnop'}", "abcdefghijklmnop"),
        ("POST data: username=anna&password=Brave-otter-2026&next=/me/", "Brave-otter-2026"),
        ('{"password1": "Quiet-heron-2027", "email": "a@example.com"}', "Quiet-heron-2027"),
        ("Not Found: /account/password-reset/NQ/cz3x1a-0123456789abcdef/", "cz3x1a-0123456789abcdef"),
        ("EMAIL_URL smtp://user:secret=hunter22@mail", "hunter22"),
    ],
)
def test_the_log_filter_masks_what_a_message_might_carry(line, secret):
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%s", (line,), None)
    assert SecretsFilter().filter(record) is True
    assert secret not in record.getMessage() and "[redacted]" in record.getMessage()


def test_the_log_filter_masks_tracebacks_and_leaves_plain_lines_alone():
    try:
        raise ValueError("bad token=lyt_abcdefghijklmnopqrstuvwxyz")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    SecretsFilter().filter(record)
    assert "abcdefghijklmnop" not in record.exc_text
    plain = "purchase p-1 recorded for C000042: 129 points, balance 1,204"
    assert redact(plain) == plain
    counts = collections.Counter(redact("password_reset_done token_prefix lyt_ short").split())
    assert counts["[redacted]"] == 0
