"""The integration API under /api/v1/: thin views that validate, call one service, shape the output."""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import exceptions, parsers, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from accounts.models import Customer, external_ref_is_printable

from . import api_examples as ex
from . import api_fast, rules, selectors, services
from .errors import DomainError, NotFound
from .models import LedgerEntry, PointsAccount, Redemption

MAX_AMOUNT = Decimal("10000000")  # 10 million in the program currency: anything above is a mistake
OLDEST_DATE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
FUTURE_TOLERANCE = dt.timedelta(days=1)
PREVIEW_AHEAD = dt.timedelta(days=366)
LANGUAGE_CODES = [code for code, _ in settings.LANGUAGES]

logger = logging.getLogger(__name__)


# --- Fields and shared serializers ----------------------------------------------------


AMOUNT_PATTERN = r"^\d{1,8}(\.\d{1,2})?$"
QUANTITY_PATTERN = r"^\d{1,7}(\.\d{1,3})?$"


@extend_schema_field({"type": "string", "format": "decimal", "pattern": AMOUNT_PATTERN, "example": "129.95"})
class DecimalStringField(serializers.Field):
    """A money amount as a plain decimal string ("129.95"): ASCII digits, at most 2 decimals, at
    most MAX_AMOUNT. No sign, exponent, spaces, "NaN" or "Infinity" (Decimal() would take them
    all): what a till sends is exactly what is booked, and anything else is a 400 that says why."""

    syntax = re.compile(r"^(-?)(\d+)(\.\d+)?$", re.ASCII)
    maximum = MAX_AMOUNT
    places = 2
    default_error_messages = {
        "not_string": 'Send amounts as decimal strings, e.g. "129.95".',
        "invalid": 'Not a plain decimal number: digits, then "." and at most 2 decimals, e.g. "129.95".',
        "not_positive": "Must be greater than 0.",
        "negative": "Must be 0 or more.",
        "decimals": "At most {places} decimal places.",
        "too_large": "Must be at most {maximum}.",
    }

    def __init__(self, *, allow_zero: bool = False, **kwargs):
        self.allow_zero = allow_zero
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_string")
        match = self.syntax.match(data)
        if match is None:
            self.fail("invalid")
        sign, whole, fraction = match.groups()
        if sign:
            self.fail("negative" if self.allow_zero else "not_positive")
        if fraction and len(fraction) - 1 > self.places:
            self.fail("decimals", places=self.places)
        if len(whole.lstrip("0")) > len(str(int(self.maximum))):
            self.fail("too_large", maximum=self.maximum)
        value = Decimal(data)
        if value > self.maximum:
            self.fail("too_large", maximum=self.maximum)
        if value == 0 and not self.allow_zero:
            self.fail("not_positive")
        return value.quantize(Decimal(1).scaleb(-self.places))

    def to_representation(self, value):
        return str(value)


@extend_schema_field({"type": "string", "format": "decimal", "pattern": QUANTITY_PATTERN, "example": "1"})
class QuantityField(DecimalStringField):
    """A line's quantity as a decimal string ("1", "0.250"): at most 3 decimals, at most 1,000,000."""

    maximum = Decimal("1000000")
    places = 3
    default_error_messages = {
        "not_string": 'Send quantities as decimal strings, e.g. "1" or "0.250".',
        "invalid": 'Not a plain decimal number: digits, then "." and at most 3 decimals, e.g. "0.250".',
    }


# DRF's fields are lenient: a CharField takes 42 as "42", a BooleanField takes 0, "yes" and
# "on", an IntegerField takes "7" and 7.0. The schema promises types; these fields keep it, so
# a client with a type bug hears about it instead of having a guess booked.
class StrictStringMixin:
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(StrictStringMixin, serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}


REF_UNPRINTABLE = "A customer reference cannot hold control characters or be only invisible ones."


class CustomerRefField(StrictCharField):
    """A customer's external_ref: up to 64 printable characters."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 64)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not external_ref_is_printable(value):
            raise serializers.ValidationError(REF_UNPRINTABLE)
        return value


class StrictSlugField(StrictStringMixin, serializers.SlugField):
    pass


class StrictEmailField(StrictStringMixin, serializers.EmailField):
    pass


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


UNSTORABLE_TEXT = "Contains a NUL character or an unpaired surrogate, which cannot be stored."


def storable_text(value: str) -> bool:
    """PostgreSQL refuses NUL in text and jsonb; UTF-8 cannot encode an unpaired surrogate
    (JSON's "\\ud800"). Either would reach the database as a 500, so it is refused up front."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_json(value) -> bool:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return all(storable_text(str(k)) and storable_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable_json(v) for v in value)
    return True


class JSONParser(parsers.JSONParser):
    """DRF's parser, but JSON nested deeper than Python's recursion limit is a 400, not a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None


class IntegrationRateThrottle(BaseThrottle):
    """At most settings.API_RATE_LIMIT_PER_MINUTE requests per token in a minute (0: no limit),
    so one integration stuck in a retry loop cannot starve the others; past it, 429 with
    Retry-After. Counted in the cache; when Redis does not answer the request is let through
    (fail open, as accounts.security.rate_limit_hit does), never refused or turned into a 500.

    The count is one Redis round trip (INCRBY and EXPIRE NX in a pipeline) on a client kept with
    the cache backend, under the key accounts.security.rate_limit_hit would use: that helper's
    add + exists + incr is three round trips and a new client object each, which was a fifth
    of a purchase's CPU. Under a large limit a process takes a lease of several requests at
    once (_api_rate_lease_size) and lets them through without asking again: never more than the
    limit in a minute, at worst refused a little early (by the leases other processes hold)."""

    window_seconds = 60

    def allow_request(self, request, view):
        per_minute = settings.API_RATE_LIMIT_PER_MINUTE
        integration = request.auth
        self.wait_seconds = None
        if not per_minute or integration is None:
            return True
        self.wait_seconds = _api_rate_limit_hit(integration.pk, per_minute, self.window_seconds)
        return self.wait_seconds is None

    def wait(self):
        return self.wait_seconds


_rate_digests: dict[int, str] = {}
# Requests this process may still let through, per Redis key (token and minute), without asking.
_rate_leases: dict[str, int] = {}
_rate_leases_lock = threading.Lock()


def _api_rate_lease_size(per_minute: int) -> int:
    """How many requests one Redis round trip counts at once: 1 (exact) for limits under 400 a
    minute, up to 50 for large ones, so the leases held by a few processes stay within ~1 % of
    the limit."""
    return max(1, min(50, per_minute // 200))


def _api_rate_limit_hit(integration_id: int, per_minute: int, seconds: int) -> int | None:
    now = int(time.time())
    window = now // seconds
    digest = _rate_digests.get(integration_id)
    if digest is None:
        digest = salted_hmac("accounts.rate_limit", f"api:token:{integration_id}").hexdigest()[:32]
        _rate_digests[integration_id] = digest
    namespace = getattr(settings, "RATE_LIMIT_NAMESPACE", "")
    backend = caches["default"]
    raw_key = f"ratelimit:{namespace}api:token:{digest}:{window}"
    with _rate_leases_lock:
        if _rate_leases.get(raw_key, 0) > 0:
            _rate_leases[raw_key] -= 1
            return None
    size = _api_rate_lease_size(per_minute)
    try:
        key = backend.make_and_validate_key(raw_key)
        client = backend.__dict__.get("_api_rate_client")
        if client is None:
            client = backend._cache.get_client(key, write=True)
            backend._api_rate_client = client
        pipe = client.pipeline(transaction=False)
        pipe.incrby(key, size)
        pipe.expire(key, seconds + 5, nx=True)
        hits, _ = pipe.execute()
    except Exception as exc:  # redis-py's ConnectionError, TimeoutError, ...; never the caller's problem
        logger.warning("rate limit api:token not counted: the cache does not answer (%s)", exc)
        return None
    granted = min(size, per_minute - (hits - size))  # the part of this lease within the limit
    if granted <= 0:
        return max(1, (window + 1) * seconds - now)
    with _rate_leases_lock:
        for stale in [k for k in _rate_leases if not k.endswith(f":{window}")]:
            del _rate_leases[stale]
        _rate_leases[raw_key] = _rate_leases.get(raw_key, 0) + granted - 1
    return None


class LoyaltyAPIView(APIView):
    """Base of every /api/v1/ view."""

    parser_classes = [JSONParser]
    throttle_classes = [IntegrationRateThrottle]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication, permissions, throttles first
        bad = {
            name: [UNSTORABLE_TEXT]
            for name, value in kwargs.items()
            if isinstance(value, str) and not storable_text(value)
        }
        if bad:
            raise serializers.ValidationError(bad)


def _check_time(value: dt.datetime | None, *, ahead: dt.timedelta = FUTURE_TOLERANCE) -> dt.datetime | None:
    if value is None:
        return None
    if value > timezone.now() + ahead:
        raise serializers.ValidationError(
            "Must not be in the future." if ahead == FUTURE_TOLERANCE else "Must be less than a year ahead."
        )
    if value < OLDEST_DATE:
        raise serializers.ValidationError("Must be after 2000-01-01.")
    return value


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))

    class Meta:
        ref_name = "ErrorDetail"


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()

    class Meta:
        ref_name = "Error"


def errors(*statuses: int, examples: Iterable[OpenApiExample] = ()) -> dict:
    """The error responses of an operation, each with its examples: the operation's own (built with
    api_examples.error_example, filed by their status) after those every operation shares (401,
    429, 503). tests/rewards/test_api_schema.py checks that no listed status is left without one."""
    meaning = {
        400: "Malformed or invalid input",
        401: "Missing or invalid token",
        403: "Not allowed",
        404: "Not found",
        409: "Conflict with an earlier request or the object's state",
        422: "Refused by a business rule, or a query parameter out of range",
        429: "Too many requests for this token: wait for Retry-After seconds",
        503: "The database is unavailable: retry after Retry-After seconds (safe with the same ids)",
    }
    # Every operation may be rate limited or meet a database outage.
    statuses = (*statuses, 429, 503)
    by_status = {s: list(ex.SHARED_ERRORS.get(s, [])) for s in statuses}
    for example in examples:
        (status,) = example.status_codes
        by_status[status].append(example)  # a KeyError here: an example for a status not listed
    return {
        s: OpenApiResponse(ErrorSerializer, description=meaning[s], examples=by_status[s]) for s in statuses
    }


def unstorable_in_path(name: str) -> OpenApiExample:
    """The 400 for a path parameter holding a NUL (LoyaltyAPIView.initial)."""
    return ex.validation_example(f"NUL in {name}", {name: [UNSTORABLE_TEXT]})


def path_parameter(name: str, kind: type, description: str, example: str, value) -> OpenApiParameter:
    return OpenApiParameter(
        name,
        kind,
        OpenApiParameter.PATH,
        description=description,
        examples=[OpenApiExample(example, value=value)],
    )


CUSTOMER_REF = path_parameter(
    "external_ref", str, "The customer's reference in your systems.", "A member", ex.CUSTOMER
)
PURCHASE_ID = path_parameter(
    "external_id", str, "The purchase's external_id as recorded.", "A recorded purchase", ex.PURCHASE
)
VOUCHER_CODE = path_parameter(
    "code",
    str,
    "The voucher code as issued (case and surrounding spaces do not matter).",
    "An issued voucher",
    ex.VOUCHER,
)
REDEMPTION_ID = path_parameter(
    "redemption_id", int, "The redemption's id, as its answer gave it.", "A redemption", ex.REDEMPTION_ID
)


def _customer(external_ref: str) -> Customer:
    customer = Customer.objects.filter(external_ref=external_ref).first()
    if customer is None:
        raise NotFound(f"No customer {external_ref!r}.")
    return customer


# --- Purchases -----------------------------------------------------------------------


class ItemIn(serializers.Serializer):
    sku = StrictCharField(max_length=64, required=False, allow_blank=True)
    category = StrictCharField(max_length=64, required=False, allow_blank=True)
    quantity = QuantityField(allow_zero=True, required=False)
    amount = DecimalStringField(allow_zero=True)


class PurchaseIn(serializers.Serializer):
    external_id = StrictCharField(max_length=100)
    customer = CustomerRefField(help_text="The customer's external_ref.")
    amount = DecimalStringField()
    currency = StrictCharField(min_length=3, max_length=3)
    occurred_at = serializers.DateTimeField()
    items = ItemIn(many=True, required=False, max_length=500)
    enroll = StrictBooleanField(required=False, default=False)

    def validate_occurred_at(self, value):
        return _check_time(value)

    def validate_currency(self, value):
        if value.upper() != settings.PROGRAM_CURRENCY:
            raise serializers.ValidationError(f"Only {settings.PROGRAM_CURRENCY} is accepted.")
        return value.upper()


class PurchaseOut(serializers.Serializer):
    external_id = serializers.CharField()
    customer = serializers.CharField()
    member = serializers.BooleanField()
    points_earned = serializers.IntegerField()
    balance = serializers.IntegerField(allow_null=True)
    explanation = serializers.ListField(child=serializers.CharField())
    summary = serializers.CharField()


_purchase_in = threading.local()


def purchase_validated(data) -> dict:
    """PurchaseIn's validated data, from a serializer kept per thread: building a serializer
    deep-copies its fields (and the items' fields), which cost more than validating a purchase.
    Validation itself is PurchaseIn's, unchanged; any invalid body goes through a fresh
    PurchaseIn, so the errors are exactly the serializer's."""
    serializer = getattr(_purchase_in, "serializer", None)
    if serializer is None:
        serializer = _purchase_in.serializer = PurchaseIn()
    try:
        return serializer.run_validation(data)
    except (serializers.ValidationError, DjangoValidationError):
        fresh = PurchaseIn(data=data)
        fresh.is_valid(raise_exception=True)
        return fresh.validated_data  # not reached for an invalid body; kept for safety


def purchase_out(purchase) -> dict:
    return {
        "external_id": purchase.external_id,
        "customer": purchase.customer.external_ref,
        "member": purchase.was_member,
        "points_earned": purchase.points_earned,
        "balance": purchase.balance_after,
        "explanation": rules.explain(purchase.explanation),
        "summary": rules.explain_summary(purchase.points_earned, purchase.explanation)
        if purchase.explanation
        else "",
    }


def _purchase_from(integration, data) -> services.PurchaseResult:
    return services.purchase_record(
        integration=integration,
        external_id=data["external_id"],
        customer_ref=data["customer"],
        amount=data["amount"],
        currency=data["currency"],
        occurred_at=data["occurred_at"],
        lines=[dict(item) for item in data.get("items", [])],
        enroll=data.get("enroll", False),
    )


class PurchaseCreateView(LoyaltyAPIView):
    @extend_schema(
        operation_id="purchase_record",
        summary="Record a purchase",
        description=(
            "Members earn points under the rules in force at `occurred_at`; non-members' purchases are "
            "recorded for analytics. Idempotent on (integration, external_id): the same body again returns "
            "the original result with 200; the same id with another body is 409."
        ),
        request=PurchaseIn,
        responses={
            201: PurchaseOut,
            200: PurchaseOut,
            **errors(400, 401, 409, 422, examples=ex.PURCHASE_ERRORS),
        },
        examples=[ex.PURCHASE_REQUEST, *ex.PURCHASE_RESPONSES],
    )
    def post(self, request):
        result = _purchase_from(request.auth, purchase_validated(request.data))
        return Response(purchase_out(result.purchase), status=201 if result.created else 200)

    def dispatch(self, request, *args, **kwargs):
        # The plain case answers without DRF's machinery (rewards/api_fast.py); the rest as above.
        answer = api_fast.purchase_answer(request)
        if answer is not None:
            return answer
        return super().dispatch(request, *args, **kwargs)


class PurchaseBatchIn(serializers.Serializer):
    purchases = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=1000)


class PurchaseBatchView(LoyaltyAPIView):
    @extend_schema(
        operation_id="purchase_record_batch",
        summary="Record up to 1,000 purchases",
        description=(
            "Each purchase is validated and recorded on its own; the answer has a result per item, in order."
        ),
        request=PurchaseBatchIn,
        responses={
            200: inline_serializer(
                "PurchaseBatchOut",
                fields={
                    "results": serializers.ListField(
                        child=inline_serializer(
                            "PurchaseBatchItem",
                            fields={
                                "index": serializers.IntegerField(),
                                "status": serializers.IntegerField(),
                                "result": PurchaseOut(required=False),
                                "error": ErrorDetailSerializer(required=False),
                            },
                        )
                    )
                },
            ),
            **errors(400, 401, examples=ex.BATCH_ERRORS),
        },
        examples=[ex.BATCH_REQUEST, ex.BATCH_RESPONSE],
    )
    def post(self, request):
        batch = PurchaseBatchIn(data=request.data)
        batch.is_valid(raise_exception=True)
        from .api_errors import _flatten, error_body

        results = []
        for index, raw in enumerate(batch.validated_data["purchases"]):
            item = PurchaseIn(data=raw)
            if not item.is_valid():
                fields = _flatten(item.errors)
                results.append(
                    {"index": index, "status": 400, **error_body("invalid", "Invalid purchase.", fields)}
                )
                continue
            try:
                result = _purchase_from(request.auth, item.validated_data)
            except DomainError as exc:
                results.append(
                    {
                        "index": index,
                        "status": exc.http_status,
                        **error_body(exc.code, exc.message, exc.fields),
                    }
                )
                continue
            results.append(
                {
                    "index": index,
                    "status": 201 if result.created else 200,
                    "result": purchase_out(result.purchase),
                }
            )
        return Response({"results": results})


class RefundIn(serializers.Serializer):
    refund_id = StrictCharField(max_length=100)
    amount = DecimalStringField()
    occurred_at = serializers.DateTimeField(required=False)

    def validate_occurred_at(self, value):
        return _check_time(value)


class RefundOut(serializers.Serializer):
    refund_id = serializers.CharField()
    purchase = serializers.CharField()
    amount = serializers.CharField()
    refunded_total = serializers.CharField()
    points_clawed_back = serializers.IntegerField()
    balance = serializers.IntegerField(allow_null=True)


class RefundCreateView(LoyaltyAPIView):
    @extend_schema(
        operation_id="purchase_refund",
        parameters=[PURCHASE_ID],
        summary="Refund part or all of a purchase",
        description=(
            "Claws back the purchase's points in proportion to the refunded amount, even if they were spent "
            "(the balance may become points debt). Idempotent on refund_id."
        ),
        request=RefundIn,
        responses={
            201: RefundOut,
            200: RefundOut,
            **errors(400, 401, 404, 409, 422, examples=ex.REFUND_ERRORS),
        },
        examples=[ex.REFUND_REQUEST, ex.REFUND_RESPONSE],
    )
    def post(self, request, external_id: str):
        serializer = RefundIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = services.purchase_refund(
            integration=request.auth,
            purchase_external_id=external_id,
            refund_id=data["refund_id"],
            amount=data["amount"],
            occurred_at=data.get("occurred_at"),
        )
        refund = result.refund
        refund.purchase.refresh_from_db()
        body = {
            "refund_id": refund.refund_id,
            "purchase": refund.purchase.external_id,
            "amount": str(refund.amount),
            "refunded_total": str(refund.purchase.refunded_amount),
            "points_clawed_back": refund.points_clawed_back,
            "balance": refund.balance_after,
        }
        return Response(body, status=201 if result.created else 200)


# --- Customers --------------------------------------------------------------------------


class TierOut(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    multiplier = serializers.CharField()


class CustomerOut(serializers.Serializer):
    external_ref = serializers.CharField()
    member = serializers.BooleanField()
    enrolled_at = serializers.DateTimeField(allow_null=True)
    balance = serializers.IntegerField()
    points_debt = serializers.IntegerField()
    points_expiring_30_days = serializers.IntegerField()
    tier = TierOut(allow_null=True)
    qualifying_spend = serializers.CharField()
    next_tier = TierOut(allow_null=True)
    spend_to_next_tier = serializers.CharField(allow_null=True)
    tier_progress = serializers.FloatField(allow_null=True)
    referral_code = serializers.CharField(allow_null=True)


def _tier_out(tier, language):
    return (
        {"code": tier.code, "name": tier.name_in(language), "multiplier": str(tier.multiplier)}
        if tier
        else None
    )


def customer_out(customer: Customer) -> dict:
    standing = hasattr(customer, "qualifying_spend_now")
    if standing:
        # Read by selectors.customer_standing_get with the customer, in the same query.
        account = None
        if customer.account_balance is not None:
            account = PointsAccount(customer_id=customer.pk, balance=customer.account_balance)
            if customer.account_tier_id is not None:
                account.tier = selectors.tier_get(customer.account_tier_id)
        spend = customer.qualifying_spend_now
        expiring = customer.points_expiring_soon
    else:
        account = PointsAccount.objects.select_related("tier").filter(pk=customer.pk).first()
    body = {
        "external_ref": customer.external_ref,
        "member": customer.is_member,
        "enrolled_at": customer.enrolled_at,
        "balance": 0,
        "points_debt": 0,
        "points_expiring_30_days": 0,
        "tier": None,
        "qualifying_spend": "0.00",
        "next_tier": None,
        "spend_to_next_tier": None,
        "tier_progress": None,
        "referral_code": customer.referral_code if customer.is_member else None,
    }
    if account is None:
        return body
    if not standing:
        spend = selectors.qualifying_spend(customer_id=customer.pk, as_of=timezone.now())
        expiring = selectors.points_expiring(customer_id=customer.pk, within_days=30)
    progress = selectors.tier_progress(account=account, spend=spend)
    body.update(
        balance=account.balance,
        points_debt=max(0, -account.balance),
        points_expiring_30_days=expiring,
        tier=_tier_out(account.tier, customer.language),
        qualifying_spend=str(rules.money(spend)),
        next_tier=_tier_out(progress["next_tier"], customer.language),
        spend_to_next_tier=str(rules.money(progress["spend_to_next_tier"]))
        if progress["next_tier"]
        else None,
        tier_progress=progress["progress"],
    )
    return body


_customer_out = threading.local()


def customer_out_data(body: dict) -> dict:
    """CustomerOut's representation, from a serializer kept per thread (see purchase_validated)."""
    serializer = getattr(_customer_out, "serializer", None)
    if serializer is None:
        serializer = _customer_out.serializer = CustomerOut()
    return serializer.to_representation(body)


class CustomerDetailView(LoyaltyAPIView):
    @extend_schema(
        operation_id="customer_get",
        parameters=[CUSTOMER_REF],
        summary="A customer's balance, tier and progress",
        description="The balance and any points debt, the tier with the spend that qualifies for it over "
        "the rolling 12 months and the spend left to the next tier, and the points that expire in the next "
        "30 days. A shopper who is not a member answers too, with `member: false`.",
        responses={
            200: CustomerOut,
            **errors(400, 401, 404, examples=[unstorable_in_path("external_ref"), *ex.CUSTOMER_ERRORS]),
        },
        examples=[ex.CUSTOMER_RESPONSE],
    )
    def get(self, request, external_ref: str):
        customer = selectors.customer_standing_get(external_ref=external_ref)
        if customer is None:
            raise NotFound(f"No customer {external_ref!r}.")
        return Response(customer_out_data(customer_out(customer)))


class EnrollIn(serializers.Serializer):
    email = StrictEmailField(required=False, allow_blank=True)
    first_name = StrictCharField(max_length=150, required=False, allow_blank=True)
    last_name = StrictCharField(max_length=150, required=False, allow_blank=True)
    birthday = serializers.DateField(required=False, allow_null=True)
    language = serializers.ChoiceField(choices=LANGUAGE_CODES, required=False)
    marketing_consent = StrictBooleanField(required=False)
    referral_code = StrictCharField(max_length=16, required=False, allow_blank=True)

    def validate_birthday(self, value):
        if value and (value > timezone.localdate() or value.year < 1900):
            raise serializers.ValidationError("Not a plausible birthday.")
        return value


class CustomerEnrollView(LoyaltyAPIView):
    @extend_schema(
        operation_id="customer_enroll",
        parameters=[CUSTOMER_REF],
        summary="Enroll a customer in the program (creating them if unknown)",
        description=(
            "Gives the signup bonus once. Enrolling an existing member changes nothing and answers 200."
        ),
        request=EnrollIn,
        responses={201: CustomerOut, 200: CustomerOut, **errors(400, 401, 422, examples=ex.ENROLL_ERRORS)},
        examples=[ex.ENROLL_REQUEST, *ex.ENROLL_RESPONSES],
    )
    def post(self, request, external_ref: str):
        serializer = EnrollIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if len(external_ref) > 64:
            raise DomainError("The customer reference is too long (64 characters at most).", code="invalid")
        if not external_ref_is_printable(external_ref):
            raise DomainError(REF_UNPRINTABLE, code="invalid")
        referral_code = data.pop("referral_code", None)
        with transaction.atomic():
            customer, _ = services.customer_get_or_create(external_ref=external_ref)
            changed = []
            for field, value in data.items():
                if field == "marketing_consent":
                    if value != customer.marketing_consent:
                        customer.marketing_consent = value
                        customer.marketing_consent_changed_at = timezone.now()
                        changed += ["marketing_consent", "marketing_consent_changed_at"]
                elif value not in (None, "") and not getattr(customer, field):
                    setattr(customer, field, value)
                    changed.append(field)
            if changed:
                customer.save(update_fields=changed)
            customer, created = services.customer_enroll(
                customer=customer, referral_code=referral_code or None
            )
        return Response(CustomerOut(customer_out(customer)).data, status=201 if created else 200)


class LedgerEntryOut(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    points = serializers.IntegerField()
    balance_after = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    explanation = serializers.ListField(child=serializers.CharField())
    summary = serializers.CharField()


class LedgerPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        """DRF silently falls back to the default for a bad page_size; say so instead."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= self.max_page_size):
            raise DomainError(
                f"page_size must be a whole number from 1 to {self.max_page_size}.",
                code="invalid",
                fields={"page_size": ["invalid"]},
            )
        return int(raw)


class CustomerLedgerView(LoyaltyAPIView):
    @extend_schema(
        operation_id="customer_ledger",
        summary="A member's ledger, newest first, with explanations",
        description="Every entry that moved the member's points, newest first, with the explanation the "
        "member sees; filter by `kind`, page with `page` and `page_size`.",
        parameters=[
            CUSTOMER_REF,
            OpenApiParameter("kind", str, enum=[k for k, _ in LedgerEntry.Kind.choices], required=False),
            OpenApiParameter("page", int, required=False, description="From 1; a page past the end is 404."),
            OpenApiParameter("page_size", int, required=False, description="From 1 to 200 (default 50)."),
        ],
        responses={
            200: inline_serializer(
                "LedgerPage",
                fields={
                    "count": serializers.IntegerField(),
                    "next": serializers.URLField(allow_null=True),
                    "previous": serializers.URLField(allow_null=True),
                    "results": LedgerEntryOut(many=True),
                },
            ),
            **errors(400, 401, 404, 422, examples=[unstorable_in_path("external_ref"), *ex.LEDGER_ERRORS]),
        },
        examples=[ex.LEDGER_RESPONSE],
    )
    def get(self, request, external_ref: str):
        customer = _customer(external_ref)
        kind = request.query_params.get("kind")
        if kind and kind not in LedgerEntry.Kind.values:
            raise DomainError(f"Unknown kind {kind!r}.", code="invalid", fields={"kind": ["unknown"]})
        paginator = LedgerPagination()
        page = paginator.paginate_queryset(
            selectors.ledger_list(customer_id=customer.pk, kind=kind), request, view=self
        )
        rows = [
            {
                "id": e.pk,
                "kind": e.kind,
                "points": e.points,
                "balance_after": e.balance_after,
                "created_at": e.created_at,
                "explanation": rules.explain(e.explanation),
                "summary": rules.explain_summary(e.points, e.explanation),
            }
            for e in page
        ]
        return paginator.get_paginated_response(LedgerEntryOut(rows, many=True).data)


# --- Rewards and redemptions ------------------------------------------------------------


class RewardOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    cost_points = serializers.IntegerField()
    image_url = serializers.CharField(allow_null=True)
    stock = serializers.IntegerField(allow_null=True)
    min_tier = serializers.CharField(allow_null=True)
    available_until = serializers.DateTimeField(allow_null=True)


class RewardListView(LoyaltyAPIView):
    @extend_schema(
        operation_id="reward_list",
        summary="Rewards available now",
        description="Names and descriptions in the language of `?language=`, or else of the request's "
        "`Accept-Language` header (the answer's `Content-Language` says which); a reward without a "
        "translation into it keeps its own.",
        parameters=[OpenApiParameter("language", str, enum=LANGUAGE_CODES, required=False)],
        responses={200: RewardOut(many=True), **errors(401, 422, examples=ex.REWARD_LIST_ERRORS)},
        examples=[ex.REWARD_LIST_RESPONSE],
    )
    def get(self, request):
        language = request.query_params.get("language")
        if language is not None and language not in LANGUAGE_CODES:
            raise DomainError(
                f"Unknown language; one of {', '.join(LANGUAGE_CODES)}.",
                code="invalid",
                fields={"language": ["unknown"]},
            )
        if language is None and "HTTP_ACCEPT_LANGUAGE" in request.META:
            language = getattr(request, "LANGUAGE_CODE", None)  # LocaleMiddleware's pick of the header
        rows = [
            {
                "id": r.pk,
                "name": r.name_in(language),
                "description": r.description_in(language),
                "cost_points": r.cost_points,
                "image_url": request.build_absolute_uri(r.image.url) if r.image else None,
                "stock": r.stock,
                "min_tier": r.min_tier.code if r.min_tier else None,
                "available_until": r.active_until,
            }
            for r in selectors.rewards_available()
        ]
        return Response(RewardOut(rows, many=True).data)


class RedemptionIn(serializers.Serializer):
    reward = StrictIntegerField(min_value=1, max_value=2**62)


class RedemptionOut(serializers.Serializer):
    id = serializers.IntegerField()
    voucher_code = serializers.CharField()
    reward = serializers.IntegerField()
    reward_name = serializers.CharField()
    points = serializers.IntegerField()
    state = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    used_at = serializers.DateTimeField(allow_null=True)
    balance = serializers.IntegerField()


def redemption_out(redemption: Redemption) -> dict:
    return {
        "id": redemption.pk,
        "voucher_code": redemption.voucher_code,
        "reward": redemption.reward_id,
        "reward_name": redemption.reward.name,
        "points": redemption.points,
        "state": redemption.state,
        "expires_at": redemption.expires_at,
        "used_at": redemption.used_at,
        "balance": PointsAccount.objects.filter(pk=redemption.customer_id)
        .values_list("balance", flat=True)
        .first(),
    }


class RedemptionCreateView(LoyaltyAPIView):
    @extend_schema(
        operation_id="reward_redeem",
        summary="Redeem points for a reward's voucher",
        description=(
            "Never makes the balance negative; refused while the member has points debt. Send an "
            "`Idempotency-Key` header: the same key again returns the same voucher (200)."
        ),
        parameters=[
            CUSTOMER_REF,
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description=(
                    "Any string of up to 100 characters, new for each redemption the member asks for; "
                    "send it again when retrying that one. Kept per member and integration."
                ),
                examples=[ex.IDEMPOTENCY_KEY_EXAMPLE],
            ),
        ],
        request=RedemptionIn,
        responses={
            201: RedemptionOut,
            200: RedemptionOut,
            **errors(400, 401, 404, 409, 422, examples=ex.REDEEM_ERRORS),
        },
        examples=[ex.REDEEM_REQUEST, *ex.REDEEM_RESPONSES],
    )
    def post(self, request, external_ref: str):
        serializer = RedemptionIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key") or None
        if key and len(key) > 100:
            raise DomainError("The Idempotency-Key is too long (100 characters at most).", code="invalid")
        if key and not storable_text(key):
            raise serializers.ValidationError({"Idempotency-Key": [UNSTORABLE_TEXT]})
        result = services.reward_redeem(
            customer=_customer(external_ref),
            reward_id=serializer.validated_data["reward"],
            idempotency_key=f"api:{request.auth.pk}:{key}" if key else None,
            integration=request.auth,
        )
        return Response(
            RedemptionOut(redemption_out(result.redemption)).data, status=201 if result.created else 200
        )


class VoucherUseView(LoyaltyAPIView):
    @extend_schema(
        operation_id="voucher_use",
        summary="Mark a voucher used at the point of sale",
        description="Marks an issued voucher used. A voucher already used, cancelled or past its validity "
        "is refused with 409 (`voucher_used`, `voucher_cancelled`, `voucher_expired`); one found past its "
        "validity is expired for good, as the nightly job would.",
        parameters=[VOUCHER_CODE],
        request=None,
        responses={
            200: RedemptionOut,
            **errors(400, 401, 404, 409, examples=[unstorable_in_path("code"), *ex.VOUCHER_USE_ERRORS]),
        },
        examples=[ex.VOUCHER_USE_RESPONSE],
    )
    def post(self, request, code: str):
        return Response(RedemptionOut(redemption_out(services.voucher_use(code=code))).data)


class CancelIn(serializers.Serializer):
    reason = StrictCharField(max_length=200, required=False, allow_blank=True)


class RedemptionCancelView(LoyaltyAPIView):
    @extend_schema(
        operation_id="redemption_cancel",
        summary="Cancel an unused voucher and return its points",
        description="Returns an issued voucher's points (they expire when the latest of the points spent "
        "on it would have). Cancelling again answers with the cancelled voucher; a used or expired voucher "
        "is 409 `not_cancellable`, and one found past its validity is expired for good, without its points.",
        parameters=[REDEMPTION_ID],
        request=CancelIn,
        responses={200: RedemptionOut, **errors(400, 401, 404, 409, examples=ex.CANCEL_ERRORS)},
        examples=[ex.CANCEL_REQUEST, ex.CANCEL_RESPONSE],
    )
    def post(self, request, redemption_id: int):
        serializer = CancelIn(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        redemption = services.redemption_cancel(
            redemption_id=redemption_id, reason=serializer.validated_data.get("reason", "")
        )
        return Response(RedemptionOut(redemption_out(redemption)).data)


# --- Events and preview -------------------------------------------------------------------


class EventIn(serializers.Serializer):
    customer = CustomerRefField()
    type = StrictSlugField(max_length=64)
    external_id = StrictCharField(max_length=100)
    data = serializers.DictField(required=False, default=dict)
    occurred_at = serializers.DateTimeField(required=False)

    def validate_occurred_at(self, value):
        return _check_time(value)

    def validate_data(self, value):
        import json

        if len(json.dumps(value, default=str)) > 32_000:
            raise serializers.ValidationError("At most 32,000 characters of data.")
        if not storable_json(value):
            raise serializers.ValidationError(UNSTORABLE_TEXT)
        return value


class EventOut(serializers.Serializer):
    external_id = serializers.CharField()
    type = serializers.CharField()
    points_awarded = serializers.IntegerField()
    explanation = serializers.ListField(child=serializers.CharField())


class EventCreateView(LoyaltyAPIView):
    @extend_schema(
        operation_id="event_record",
        summary="Post a custom event (a review, a newsletter signup, an abandoned cart)",
        description=(
            "Earns the fixed points of the event type's rule, within its cap per period (the period "
            "`occurred_at` falls in). Idempotent on external_id: the same event again answers the "
            "original with 200; other data or another `occurred_at` for the same id is 409."
        ),
        request=EventIn,
        responses={201: EventOut, 200: EventOut, **errors(400, 401, 409, examples=ex.EVENT_ERRORS)},
        examples=[ex.EVENT_REQUEST, ex.EVENT_RESPONSE],
    )
    def post(self, request):
        serializer = EventIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = services.event_record(
            integration=request.auth,
            external_id=data["external_id"],
            customer_ref=data["customer"],
            event_type=data["type"],
            data=data.get("data") or {},
            occurred_at=data.get("occurred_at"),
        )
        event = result.event
        body = {
            "external_id": event.external_id,
            "type": event.event_type,
            "points_awarded": event.points_awarded,
            "explanation": rules.explain(event.explanation),
        }
        return Response(EventOut(body).data, status=201 if result.created else 200)


class PreviewIn(serializers.Serializer):
    customer = CustomerRefField(required=False)
    amount = DecimalStringField()
    items = ItemIn(many=True, required=False, max_length=500)
    occurred_at = serializers.DateTimeField(required=False)

    def validate_occurred_at(self, value):
        # A preview may look ahead (next month's promotion), not into the far future.
        return _check_time(value, ahead=PREVIEW_AHEAD)


class PreviewOut(serializers.Serializer):
    points = serializers.IntegerField()
    explanation = serializers.ListField(child=serializers.CharField())
    summary = serializers.CharField()


def earn_preview(
    *, customer: Customer | None, amount: Decimal, items: list[dict], at: dt.datetime
) -> rules.EarnResult:
    """What a basket would earn, writing nothing. Without a customer: a new member in the lowest tier."""
    if customer is not None and customer.is_member:
        account = PointsAccount.objects.select_related("tier").filter(pk=customer.pk).first()
        tier = account.tier if account else None
    else:
        tier = selectors.tier_lowest()
        customer = customer or Customer(external_ref="preview", enrolled_at=at)
        if customer.enrolled_at is None:
            customer = Customer(
                external_ref=customer.external_ref, enrolled_at=at, language=customer.language
            )
    ctx = selectors.earn_context_get(customer=customer, tier=tier, at=at)
    lines = [rules.Line(str(i.get("category") or ""), i["amount"]) for i in items]
    return rules.purchase_points(amount=amount, lines=lines, ctx=ctx)


class PreviewView(LoyaltyAPIView):
    @extend_schema(
        operation_id="earn_preview",
        summary="What would this basket earn? (writes nothing)",
        description="For a named customer, at their tier and promotions; without one, for a new member.",
        request=PreviewIn,
        responses={200: PreviewOut, **errors(400, 401, 404, examples=ex.PREVIEW_ERRORS)},
        examples=[ex.PREVIEW_REQUEST, ex.PREVIEW_RESPONSE],
    )
    def post(self, request):
        serializer = PreviewIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        customer = _customer(data["customer"]) if data.get("customer") else None
        result = earn_preview(
            customer=customer,
            amount=data["amount"],
            items=data.get("items", []),
            at=data.get("occurred_at") or timezone.now(),
        )
        return Response(
            {
                "points": result.points,
                "explanation": rules.explain(result.explanation),
                "summary": rules.explain_summary(result.points, result.explanation),
            }
        )
