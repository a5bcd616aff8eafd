"""POST /api/v1/purchases in the plain case, without DRF's request machinery.

A point of sale sends the same well-formed purchase thousands of times an hour. For that case
DRF's request wrapping, content negotiation, serializer fields and renderer cost more of the
server's CPU than recording the purchase does, so `purchase_plain` recognises it with plain
Python and the view answers it directly, with the same service call, the same answer bytes and
the same headers.

The rule: the plain path accepts a subset of what PurchaseIn accepts and produces exactly its
validated data (tests/rewards/test_api_plain.py checks both with generated bodies). Anything
else — a missing or odd field, whitespace DRF would trim, a lower-case currency, a naive time,
an unknown key, another Accept or charset, an error from the service — returns None and
PurchaseCreateView answers through DRF as before, errors and all. The service is atomic, so a
request handed over after an error has written nothing; DRF then runs it again and answers in
the API's error shape (the rate limit counts such a request twice).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import APIException

from accounts.models import external_ref_is_printable

from . import api  # a module reference: rewards.api imports this module in turn
from .authentication import IntegrationTokenAuthentication

# The API's own limits (rewards/api.py), restated for plain values.
_AMOUNT = re.compile(r"\d{1,8}(?:\.\d{1,2})?", re.ASCII)
_QUANTITY = re.compile(r"\d{1,7}(?:\.\d{1,3})?", re.ASCII)
_CENT = Decimal("0.01")
_THOUSANDTH = Decimal("0.001")
_MOST_QUANTITY = Decimal(1000000)
_REQUIRED_KEYS = frozenset({"external_id", "customer", "amount", "currency", "occurred_at"})
_PURCHASE_KEYS = _REQUIRED_KEYS | {"items", "enroll"}
_ITEM_KEYS = frozenset({"sku", "category", "quantity", "amount"})
_PLAIN_ACCEPT = frozenset({"", "*/*", "application/json"})
# Set by loyalty_site.wsgi.PurchaseLane on a request it tried and handed to the full stack.
LANE_TRIED = "loyalty.purchase_lane_tried"


def _text(value, max_length: int, *, blank: bool = False) -> bool:
    """A string DRF's CharField keeps as it is: no whitespace to trim, nothing unprintable
    (NUL, surrogates, controls), within its length."""
    return (
        isinstance(value, str)
        and (blank or value != "")
        and len(value) <= max_length
        and value.isprintable()
        and value.strip() == value
    )


def _money(value, *, zero: bool, pattern=_AMOUNT, maximum=None, step=_CENT) -> Decimal | None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        return None
    amount = Decimal(value)
    if (amount == 0 and not zero) or (maximum is not None and amount > maximum):
        return None
    return amount.quantize(step)


def _moment(value) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is None or parsed.tzinfo is None or parsed.utcoffset() is None:
        return None  # naive: DRF makes it aware in the current zone, with its own checks
    try:
        moment = parsed.astimezone(timezone.get_current_timezone())
    except OverflowError:
        return None
    if moment > timezone.now() + api.FUTURE_TOLERANCE or moment < api.OLDEST_DATE:
        return None
    return moment


def _item(value) -> dict | None:
    if not isinstance(value, dict) or "amount" not in value or not value.keys() <= _ITEM_KEYS:
        return None
    item = {}
    for key in ("sku", "category"):
        if key in value:
            if not _text(value[key], 64, blank=True):
                return None
            item[key] = value[key]
    if "quantity" in value:
        quantity = _money(
            value["quantity"], zero=True, pattern=_QUANTITY, maximum=_MOST_QUANTITY, step=_THOUSANDTH
        )
        if quantity is None:
            return None
        item["quantity"] = quantity
    amount = _money(value["amount"], zero=True, maximum=api.MAX_AMOUNT)
    if amount is None:
        return None
    item["amount"] = amount
    return item


def purchase_plain(body) -> dict | None:
    """PurchaseIn's validated data for a plain, valid purchase body; None for anything else."""
    if not isinstance(body, dict) or not body.keys() <= _PURCHASE_KEYS or not body.keys() >= _REQUIRED_KEYS:
        return None
    external_id, customer = body["external_id"], body["customer"]
    if not _text(external_id, 100) or not _text(customer, 64) or not external_ref_is_printable(customer):
        return None
    amount = _money(body["amount"], zero=False, maximum=api.MAX_AMOUNT)
    if amount is None or body["currency"] != settings.PROGRAM_CURRENCY:
        return None
    occurred_at = _moment(body["occurred_at"])
    if occurred_at is None:
        return None
    data = {
        "external_id": external_id,
        "customer": customer,
        "amount": amount,
        "currency": settings.PROGRAM_CURRENCY,
        "occurred_at": occurred_at,
    }
    if "items" in body:
        raw_items = body["items"]
        if not isinstance(raw_items, list) or len(raw_items) > 500:
            return None
        items = [_item(raw) for raw in raw_items]
        if any(item is None for item in items):
            return None
        data["items"] = items
    enroll = body.get("enroll", False)
    if not isinstance(enroll, bool):
        return None
    data["enroll"] = enroll
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_authentication = IntegrationTokenAuthentication()


def _json(data: dict, status: int) -> HttpResponse:
    # As DRF's JSONRenderer writes it (UNICODE_JSON, COMPACT_JSON, STRICT_JSON), with the
    # Allow header its APIView adds.
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    body = body.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    response = HttpResponse(body.encode(), status=status, content_type="application/json")
    response["Allow"] = "POST, OPTIONS"
    return response


def _record(integration, data):
    """The service call, checking the database connection by using it.

    Django checks a reused connection before a request's first statement (CONN_HEALTH_CHECKS:
    a `SELECT 1` round trip, ~5 % of this path's CPU). Here the purchase itself is the check:
    on a connection that turns out dead (PostgreSQL restarted, an idle connection cut) the
    service's first statement fails, and purchase_answer hands the request to the full path
    with Django's check due again, which then replaces the connection and records the
    purchase on a new one. Whatever the failure left behind, that is safe: each of the
    service's writes is one transaction (a statement or an atomic block), idempotent on
    (integration, external_id), so a first attempt that did commit is answered as its replay
    (tests/site/test_outages.py)."""
    if connection.connection is not None and connection.health_check_enabled:
        connection.health_check_done = True
    try:
        return api._purchase_from(integration, data)
    except Exception:
        connection.health_check_done = False
        raise


def purchase_answer(request) -> HttpResponse | None:
    """The answer to a plain purchase request, or None for PurchaseCreateView's full path."""
    if request.method != "POST" or request.content_type != "application/json" or LANE_TRIED in request.META:
        return None
    if request.content_params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        return None
    if request.headers.get("Accept", "") not in _PLAIN_ACCEPT:
        return None
    try:
        authenticated = _authentication.authenticate(request)
    except APIException:
        return None
    if authenticated is None:
        return None
    integration = authenticated[0]
    try:
        raw = request.body
    except Exception:  # noqa: BLE001 - too large (RequestDataTooBig), unreadable: DRF says which
        return None
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    data = purchase_plain(body)
    if data is None:
        return None
    per_minute = settings.API_RATE_LIMIT_PER_MINUTE
    window = api.IntegrationRateThrottle.window_seconds
    if per_minute and api._api_rate_limit_hit(integration.pk, per_minute, window) is not None:
        return None  # DRF's throttle answers the 429
    try:
        result = _record(integration, data)
    except Exception:  # noqa: BLE001 - rolled back; the full path answers in the API's shape
        return None
    return _json(api.purchase_out(result.purchase), 201 if result.created else 200)
