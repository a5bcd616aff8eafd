"""Examples for the OpenAPI schema of /api/v1/: one member's day told the same way by every operation.

Customer C000042 (Bronze, 1,250 points) buys coffee beans in purchase POS1-2026-000123 (219 points,
balance 1,469), returns half of it in refund R-77 (110 points back, 1,359), redeems reward 7 for
voucher FDBH-D59L-T3JM (redemption 5012, 300 points, 1,059), which is then used or cancelled.
Field names are those of the views' *Out serializers; amounts are decimal strings. Error answers
are built with the functions that build the real ones (rewards/api_errors.py), with the codes and
messages the code emits; tests/rewards/test_api_schema.py checks all of this against the schema.
"""

from django.conf import settings
from drf_spectacular.utils import OpenApiExample
from rest_framework import exceptions

from .api_errors import DRF_CODES, database_unavailable_body, error_body, validation_body

CUSTOMER = "C000042"
UNKNOWN_CUSTOMER = "C000099"
PURCHASE = "POS1-2026-000123"
REWARD_ID = 7
REDEMPTION_ID = 5012
VOUCHER = "FDBH-D59L-T3JM"
IDEMPOTENCY_KEY = "3b9e6a1c-2f4d-4c8e-9a71-5d0f2e8b6c13"


# --- Builders -------------------------------------------------------------------------------


def request_example(name: str, value: dict) -> OpenApiExample:
    return OpenApiExample(name, value=value, request_only=True)


def response_example(name: str, value, *statuses: int) -> OpenApiExample:
    return OpenApiExample(name, value=value, response_only=True, status_codes=list(statuses))


def error_example(
    name: str, status: int, code: str, message: str, fields: dict | None = None
) -> OpenApiExample:
    """An error answer as api_errors.error_body builds it; `errors()` in api.py files it under its status."""
    return response_example(name, error_body(code, message, fields), status)


def validation_example(name: str, fields: dict[str, list[str]]) -> OpenApiExample:
    """A 400 for input that failed validation, as the exception handler answers it."""
    return response_example(name, validation_body(fields), 400)


# --- Errors every operation shares ------------------------------------------------------------

NOT_JSON = error_example("Body is not JSON", 400, *DRF_CODES[exceptions.ParseError])
NO_TOKEN = error_example("No token", 401, *DRF_CODES[exceptions.NotAuthenticated])
TOKEN_REFUSED = error_example(
    "Token refused",
    401,
    DRF_CODES[exceptions.AuthenticationFailed][0],
    "The token is not valid or the integration is disabled.",
)
RATE_LIMITED = error_example(
    "Rate limited",
    429,
    DRF_CODES[exceptions.Throttled][0],
    "Request was throttled. Expected available in 42 seconds.",
)
DATABASE_UNAVAILABLE = response_example("Database unavailable", database_unavailable_body(), 503)

SHARED_ERRORS = {401: [NO_TOKEN, TOKEN_REFUSED], 429: [RATE_LIMITED], 503: [DATABASE_UNAVAILABLE]}

NO_CUSTOMER = error_example("Unknown customer", 404, "not_found", f"No customer {UNKNOWN_CUSTOMER!r}.")
NOT_A_MEMBER = error_example(
    "Not a member", 422, "not_a_member", "This customer is not a member of the loyalty program."
)


# --- Purchases --------------------------------------------------------------------------------

PURCHASE_IN = {
    "external_id": PURCHASE,
    "customer": CUSTOMER,
    "amount": "129.95",
    "currency": settings.PROGRAM_CURRENCY,
    "occurred_at": "2026-11-23T10:15:00+01:00",
    "items": [{"sku": "ESP-1", "category": "coffee-beans", "quantity": "1", "amount": "89.95"}],
}
PURCHASE_OUT = {
    "external_id": PURCHASE,
    "customer": CUSTOMER,
    "member": True,
    "points_earned": 219,
    "balance": 1469,
    "explanation": [
        "129.95 × 1 points = 129.95 base points",
        "Category coffee-beans (89.95) × 2: 89.95 extra points",
        "= 219 points (rounded down)",
    ],
    "summary": "219 pts: 129.95 × 1 base, coffee-beans × 2",
}
PURCHASE_REQUEST = request_example("A basket with coffee", PURCHASE_IN)
PURCHASE_RESPONSES = [
    response_example("Points earned by a member", PURCHASE_OUT, 201, 200),
    response_example(
        "A shopper who is not a member",
        {
            **PURCHASE_OUT,
            "external_id": "POS1-2026-000124",
            "customer": "C000117",
            "member": False,
            "points_earned": 0,
            "balance": None,
            "explanation": [],
            "summary": "",
        },
        201,
        200,
    ),
]
PURCHASE_ERRORS = [
    NOT_JSON,
    validation_example("Amount not positive", {"amount": ["Must be greater than 0."]}),
    validation_example("Date in the future", {"occurred_at": ["Must not be in the future."]}),
    error_example(
        "Same id with other data",
        409,
        "idempotency_conflict",
        f"Purchase {PURCHASE!r} was already recorded with different data.",
    ),
    NOT_A_MEMBER,
]

BATCH_REQUEST = request_example(
    "Three purchases with one mistake",
    {
        "purchases": [
            PURCHASE_IN,
            {**PURCHASE_IN, "external_id": "POS1-2026-000124", "amount": "45.00", "items": []},
            {**PURCHASE_IN, "external_id": "POS1-2026-000125", "amount": "-12.00", "items": []},
        ]
    },
)
BATCH_RESPONSE = response_example(
    "A result per purchase",
    {
        "results": [
            {"index": 0, "status": 200, "result": PURCHASE_OUT},
            {
                "index": 1,
                "status": 201,
                "result": {
                    **PURCHASE_OUT,
                    "external_id": "POS1-2026-000124",
                    "points_earned": 45,
                    "balance": 1514,
                    "explanation": ["45.00 × 1 points = 45 base points", "= 45 points (rounded down)"],
                    "summary": "45 pts: 45.00 × 1 base",
                },
            },
            {
                "index": 2,
                "status": 400,
                **error_body("invalid", "Invalid purchase.", {"amount": ["Must be greater than 0."]}),
            },
        ]
    },
    200,
)
BATCH_ERRORS = [
    NOT_JSON,
    validation_example("Empty batch", {"purchases": ["Ensure this field has at least 1 elements."]}),
]

REFUND_REQUEST = request_example("Half refunded", {"refund_id": "R-77", "amount": "64.97"})
REFUND_RESPONSE = response_example(
    "Points clawed back",
    {
        "refund_id": "R-77",
        "purchase": PURCHASE,
        "amount": "64.97",
        "refunded_total": "64.97",
        "points_clawed_back": 110,
        "balance": 1359,
    },
    201,
    200,
)
REFUND_ERRORS = [
    NOT_JSON,
    validation_example(
        "Amount not a decimal string", {"amount": ['Send amounts as decimal strings, e.g. "129.95".']}
    ),
    error_example(
        "Unknown purchase", 404, "not_found", "No purchase 'POS1-2026-000999' from this integration."
    ),
    error_example(
        "Same refund id with other data",
        409,
        "idempotency_conflict",
        "Refund 'R-77' was already recorded with different data.",
    ),
    error_example(
        "More than is left to refund",
        422,
        "refund_exceeds_purchase",
        "Only 64.98 of this purchase is left to refund.",
        {"amount": ["at most 64.98"]},
    ),
]


# --- Customers --------------------------------------------------------------------------------

BRONZE = {"code": "bronze", "name": "Bronze", "multiplier": "1.00"}
SILVER = {"code": "silver", "name": "Silver", "multiplier": "1.25"}
CUSTOMER_OUT = {
    "external_ref": CUSTOMER,
    "member": True,
    "enrolled_at": "2026-03-02T09:41:12+01:00",
    "balance": 1359,
    "points_debt": 0,
    "points_expiring_30_days": 120,
    "tier": BRONZE,
    "qualifying_spend": "1544.93",
    "next_tier": SILVER,
    "spend_to_next_tier": "455.07",
    "tier_progress": 0.772465,
    "referral_code": "6E3YGYJM",
}
CUSTOMER_RESPONSE = response_example("A Bronze member", CUSTOMER_OUT, 200)
CUSTOMER_ERRORS = [NO_CUSTOMER]

ENROLL_REQUEST = request_example(
    "Signed up at the till",
    {
        "email": "anna.jensen@example.com",
        "first_name": "Anna",
        "last_name": "Jensen",
        "birthday": "1988-04-17",
        "language": "da",
        "marketing_consent": True,
        "referral_code": "K7QH2M9P",
    },
)
ENROLL_RESPONSES = [
    response_example(
        "Enrolled with the signup bonus",
        {
            **CUSTOMER_OUT,
            "balance": 50,
            "points_expiring_30_days": 0,
            "qualifying_spend": "0.00",
            "spend_to_next_tier": "2000.00",
            "tier_progress": 0.0,
        },
        201,
    ),
    response_example("Already a member", CUSTOMER_OUT, 200),
]
ENROLL_ERRORS = [
    NOT_JSON,
    validation_example("Implausible birthday", {"birthday": ["Not a plausible birthday."]}),
    validation_example("Bad email address", {"email": ["Enter a valid email address."]}),
    error_example(
        "Unknown referral code",
        422,
        "unknown_referral_code",
        "Unknown referral code.",
        {"referral_code": ["unknown"]},
    ),
    error_example(
        "Reference too long", 422, "invalid", "The customer reference is too long (64 characters at most)."
    ),
]

LEDGER_RESPONSE = response_example(
    "The newest two entries",
    {
        "count": 27,
        "next": f"https://loyalty.example.com/api/v1/customers/{CUSTOMER}/ledger?page=2&page_size=2",
        "previous": None,
        "results": [
            {
                "id": 90412,
                "kind": "clawback",
                "points": -110,
                "balance_after": 1359,
                "created_at": "2026-11-23T16:02:47+01:00",
                "explanation": [f"Refund of 64.97 on purchase {PURCHASE}: points taken back"],
                "summary": f"-110 pts: Refund of 64.97 on purchase {PURCHASE}: points taken back",
            },
            {
                "id": 90321,
                "kind": "earn",
                "points": 219,
                "balance_after": 1469,
                "created_at": "2026-11-23T10:15:00+01:00",
                "explanation": PURCHASE_OUT["explanation"],
                "summary": PURCHASE_OUT["summary"],
            },
        ],
    },
    200,
)
LEDGER_ERRORS = [
    NO_CUSTOMER,
    error_example("Page past the end", 404, "not_found", "Invalid page."),
    error_example(
        "page_size out of range",
        422,
        "invalid",
        "page_size must be a whole number from 1 to 200.",
        {"page_size": ["invalid"]},
    ),
    error_example("Unknown kind", 422, "invalid", "Unknown kind 'points'.", {"kind": ["unknown"]}),
]


# --- Rewards and redemptions --------------------------------------------------------------------

# One reward: drf-spectacular shows a list operation's example as a list of it.
REWARD_LIST_RESPONSE = response_example(
    "A reward",
    {
        "id": REWARD_ID,
        "name": "Free cappuccino",
        "description": "Any size, in any of our shops.",
        "cost_points": 300,
        "image_url": "https://loyalty.example.com/media/rewards/cappuccino.jpg",
        "stock": None,
        "min_tier": None,
        "available_until": "2026-12-31T23:59:59+01:00",
    },
    200,
)
REWARD_LIST_ERRORS = [
    error_example(
        "Unknown language",
        422,
        "invalid",
        f"Unknown language; one of {', '.join(code for code, _ in settings.LANGUAGES)}.",
        {"language": ["unknown"]},
    ),
]

REDEMPTION_OUT = {
    "id": REDEMPTION_ID,
    "voucher_code": VOUCHER,
    "reward": REWARD_ID,
    "reward_name": "Free cappuccino",
    "points": 300,
    "state": "issued",
    "expires_at": "2026-12-24T14:05:31+01:00",
    "used_at": None,
    "balance": 1059,
}
IDEMPOTENCY_KEY_EXAMPLE = OpenApiExample("A key per redemption attempt", value=IDEMPOTENCY_KEY)
REDEEM_REQUEST = request_example("A free cappuccino", {"reward": REWARD_ID})
REDEEM_RESPONSES = [
    response_example("Voucher issued", REDEMPTION_OUT, 201),
    response_example("Same Idempotency-Key again", REDEMPTION_OUT, 200),
]
REDEEM_ERRORS = [
    NOT_JSON,
    validation_example("Reward id not an integer", {"reward": ["A valid integer is required."]}),
    NO_CUSTOMER,
    error_example("Unknown reward", 404, "not_found", "No such reward."),
    error_example(
        "Idempotency-Key used for another reward",
        409,
        "idempotency_conflict",
        "This idempotency key was used for another reward.",
    ),
    error_example(
        "Too few points", 422, "insufficient_points", "This reward costs 300 points; the balance is 120."
    ),
    error_example(
        "Points debt", 422, "points_debt", "There is a points debt of 110 to repay before redeeming."
    ),
    error_example("Reward not available now", 422, "reward_unavailable", "This reward is not available now."),
    error_example("Out of stock", 422, "out_of_stock", "This reward is out of stock."),
    error_example("Tier too low", 422, "tier_too_low", "This reward needs the Gold tier."),
    error_example(
        "Limit per customer reached",
        422,
        "limit_reached",
        "The limit for this reward per customer is reached.",
    ),
    NOT_A_MEMBER,
    error_example(
        "Idempotency-Key too long",
        422,
        "invalid",
        "The Idempotency-Key is too long (100 characters at most).",
    ),
]

VOUCHER_USE_RESPONSE = response_example(
    "Voucher used", {**REDEMPTION_OUT, "state": "used", "used_at": "2026-11-26T08:47:10+01:00"}, 200
)
VOUCHER_USE_ERRORS = [
    error_example("Unknown voucher", 404, "not_found", "No such voucher."),
    error_example(
        "Used already", 409, "voucher_used", "This voucher is used (used 2026-11-26T07:47:10+00:00)."
    ),
    error_example("Cancelled", 409, "voucher_cancelled", "This voucher is cancelled."),
    error_example("Expired", 409, "voucher_expired", "This voucher is expired."),
]

CANCEL_REQUEST = request_example("The member changed their mind", {"reason": "Customer changed their mind"})
CANCEL_RESPONSE = response_example(
    "Cancelled with its points returned", {**REDEMPTION_OUT, "state": "cancelled", "balance": 1359}, 200
)
CANCEL_ERRORS = [
    NOT_JSON,
    validation_example("Reason not a string", {"reason": ["Must be a string."]}),
    error_example("Unknown redemption", 404, "not_found", "No such redemption."),
    error_example(
        "Voucher used already", 409, "not_cancellable", "This voucher is used and cannot be cancelled."
    ),
]


# --- Events and preview -----------------------------------------------------------------------

EVENT_REQUEST = request_example(
    "A product review",
    {"customer": CUSTOMER, "type": "product_review", "external_id": "rev-981", "data": {"sku": "ESP-1"}},
)
EVENT_RESPONSE = response_example(
    "Points for the review",
    {
        "external_id": "rev-981",
        "type": "product_review",
        "points_awarded": 25,
        "explanation": ["Points for Product review"],
    },
    201,
    200,
)
SLUG_MESSAGE = 'Enter a valid "slug" consisting of letters, numbers, underscores or hyphens.'
EVENT_ERRORS = [
    NOT_JSON,
    validation_example("Type not a slug", {"type": [SLUG_MESSAGE]}),
    error_example(
        "Same id with other data",
        409,
        "idempotency_conflict",
        "Event 'rev-981' was already recorded with different data.",
    ),
]

PREVIEW_REQUEST = request_example(
    "A basket for a member",
    {"customer": CUSTOMER, "amount": "129.95", "items": [{"category": "coffee-beans", "amount": "89.95"}]},
)
PREVIEW_RESPONSE = response_example(
    "What it would earn",
    {key: PURCHASE_OUT[key] for key in ("explanation", "summary")} | {"points": 219},
    200,
)
PREVIEW_ERRORS = [
    NOT_JSON,
    validation_example("Amount as a number", {"amount": ['Send amounts as decimal strings, e.g. "129.95".']}),
    NO_CUSTOMER,
]
