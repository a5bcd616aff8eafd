"""Every write that moves points. Each service is atomic, takes keyword arguments,
and is idempotent on a stated key; all changes of a member's balance happen behind
a row lock on their PointsAccount, in the same transaction as the ledger entries that
explain them: `select_for_update` before reading the balance, or, for a known member's
purchase, one statement that updates the account row only if it is still the version read
(_purchase_record_unlocked), so every writer that changes what a purchase earns or a
member's tier must change that row.

Lock order, everywhere: customer row (enrolment only) → points accounts in
ascending id → purchase → reward → redemption. Keeping one order rules out
deadlocks between services.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from accounts.models import Customer

from . import rules, selectors
from .errors import (
    Conflict,
    DomainError,
    InsufficientPoints,
    NotAMember,
    NotFound,
    PointsDebt,
    RewardUnavailable,
)
from .models import (
    CustomerEvent,
    EventRule,
    Integration,
    LedgerEntry,
    LotConsumption,
    PointsAccount,
    PointsLot,
    Purchase,
    PurchaseLine,
    Redemption,
    Refund,
    Reward,
    Tier,
)
from .prepared import prepared_cursor
from .selectors import program_get, qualifying_spend, tier_lowest

Kind = LedgerEntry.Kind


def program_tz() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def request_hash(payload: dict) -> str:
    """A stable fingerprint of a request body: same body, same hash."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=program_tz())


def _lot_expiry(earned_at: dt.datetime) -> dt.datetime | None:
    expires_on = rules.expiry_date(
        timezone.localtime(earned_at, program_tz()).date(), program_get()["rules"].expiry_months
    )
    return _day_start(expires_on) if expires_on else None


# --- Accounts and the two primitive moves ------------------------------------------


def _account_lock(customer_id: int) -> PointsAccount:
    try:
        return (
            PointsAccount.objects.select_for_update(of=("self",)).select_related("tier").get(pk=customer_id)
        )
    except PointsAccount.DoesNotExist:
        raise NotAMember("This customer is not a member of the loyalty program.") from None


def _entry_append(
    account: PointsAccount,
    *,
    kind: str,
    points: int,
    key: str,
    explanation: list[dict],
    at: dt.datetime,
    **cause,
) -> LedgerEntry:
    """Append one entry and move the (locked) account's balance by its points, in this transaction."""
    account.balance += points
    entry = LedgerEntry.objects.create(
        account=account,
        kind=kind,
        points=points,
        balance_after=account.balance,
        created_at=at,
        idempotency_key=key,
        explanation=explanation,
        **cause,
    )
    PointsAccount.objects.filter(pk=account.pk).update(balance=account.balance, updated_at=timezone.now())
    return entry


def _credit(
    account: PointsAccount,
    *,
    kind: str,
    points: int,
    key: str,
    explanation: list[dict],
    at: dt.datetime,
    expires_at: dt.datetime | None | bool = True,
    **cause,
) -> LedgerEntry:
    """Add points: a new entry and a lot. While in debt, the debt is repaid first.

    `expires_at=True` applies the program's expiry to a lot earned `at`.
    """
    assert points > 0
    debt = max(0, -account.balance)
    repaid = min(debt, points)
    if repaid:
        explanation = [*explanation, {"code": "debt_repaid", "points": repaid}]
    entry = _entry_append(account, kind=kind, points=points, key=key, explanation=explanation, at=at, **cause)
    if points - repaid > 0:
        PointsLot.objects.create(
            account=account,
            entry=entry,
            points=points - repaid,
            remaining=points - repaid,
            earned_at=at,
            expires_at=_lot_expiry(at) if expires_at is True else expires_at,
        )
    return entry


def _debit(
    account: PointsAccount,
    *,
    kind: str,
    points: int,
    key: str,
    explanation: list[dict],
    at: dt.datetime,
    allow_debt: bool,
    **cause,
) -> LedgerEntry:
    """Take points from the oldest unexpired lots first. Only clawbacks and staff
    corrections may take more than the balance (the rest becomes points debt)."""
    assert points > 0
    if not allow_debt and account.balance < points:
        raise InsufficientPoints(f"The balance is {account.balance} points; {points} are needed.")
    available = max(0, account.balance)
    entry = _entry_append(
        account, kind=kind, points=-points, key=key, explanation=explanation, at=at, **cause
    )
    to_take = min(points, available)
    consumptions = []
    if to_take:
        for lot in PointsLot.objects.filter(account=account, remaining__gt=0).order_by("earned_at", "id"):
            take = min(lot.remaining, to_take)
            PointsLot.objects.filter(pk=lot.pk).update(remaining=F("remaining") - take)
            consumptions.append(LotConsumption(entry=entry, lot=lot, points=take))
            to_take -= take
            if not to_take:
                break
        LotConsumption.objects.bulk_create(consumptions)
    return entry


def _entry_exists(key: str) -> bool:
    return LedgerEntry.objects.filter(idempotency_key=key).exists()


def _expire_due_lots(account: PointsAccount, *, before: dt.datetime) -> int:
    """Expire what is left of this member's lots that expired before `before`. Idempotent per lot."""
    expired = 0
    for lot in PointsLot.objects.filter(account=account, remaining__gt=0, expires_at__lte=before).order_by(
        "id"
    ):
        key = f"expire:lot:{lot.pk}"
        if _entry_exists(key):
            continue
        earned_on = timezone.localtime(lot.earned_at, program_tz()).date().isoformat()
        remaining = lot.remaining
        entry = _entry_append(
            account,
            kind=Kind.EXPIRE,
            points=-remaining,
            key=key,
            explanation=[{"code": "expire", "earned_on": earned_on}],
            at=timezone.now(),
            lot=lot,
        )
        PointsLot.objects.filter(pk=lot.pk).update(remaining=0)
        LotConsumption.objects.create(entry=entry, lot=lot, points=remaining)
        expired += remaining
    return expired


# --- Customers and enrolment -------------------------------------------------------


# Customers read with a plain cursor (see selectors.customer_from_row); the reference is a parameter.
_CUSTOMER_FIELDS = selectors._CUSTOMER_FIELDS
_CUSTOMER_COLUMNS = selectors._CUSTOMER_COLUMNS
_CUSTOMER_BY_REF_SQL = f"SELECT {_CUSTOMER_COLUMNS} FROM accounts_customer c WHERE c.external_ref = %s"  # noqa: S608
_customer_from_row = selectors.customer_from_row


def customer_get_or_create(*, external_ref: str, defaults: dict | None = None) -> tuple[Customer, bool]:
    """The customer the shop's systems call `external_ref`, created as a non-member if new.

    Safe under concurrency: a concurrent creation of the same ref is caught by the
    unique constraint and the existing row is returned.
    """
    # Raw: on the hot path of purchases, where compiling the ORM query cost more than running it.
    with prepared_cursor() as cursor:
        cursor.execute(_CUSTOMER_BY_REF_SQL, [external_ref])
        row = cursor.fetchone()
    if row:
        return _customer_from_row(row), False
    try:
        with transaction.atomic():
            return Customer.objects.create(external_ref=external_ref, **(defaults or {})), True
    except IntegrityError:
        return Customer.objects.get(external_ref=external_ref), False


@transaction.atomic
def customer_enroll(
    *, customer: Customer, at: dt.datetime | None = None, referral_code: str | None = None
) -> tuple[Customer, bool]:
    """Make a shopper a member: account, lowest tier, signup bonus. Idempotent per customer."""
    at = at or timezone.now()
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    if customer.enrolled_at is not None and PointsAccount.objects.filter(pk=customer.pk).exists():
        return customer, False
    if referral_code and customer.referred_by_id is None:
        referrer = (
            Customer.objects.filter(referral_code=referral_code.strip().upper())
            .exclude(pk=customer.pk)
            .first()
        )
        if referrer is None:
            raise DomainError(
                "Unknown referral code.", code="unknown_referral_code", fields={"referral_code": ["unknown"]}
            )
        customer.referred_by = referrer
    customer.enrolled_at = customer.enrolled_at or at
    customer.save(update_fields=["enrolled_at", "referred_by"])
    account = PointsAccount.objects.create(customer=customer, tier=tier_lowest(), tier_changed_at=at)
    bonus = program_get()["rules"].signup_bonus
    if bonus:
        _credit(
            account,
            kind=Kind.BONUS,
            points=bonus,
            key=f"signup:{customer.pk}",
            explanation=[{"code": "signup_bonus"}],
            at=at,
        )
    return customer, True


# --- Purchases and refunds -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PurchaseRequest:
    """One purchase as purchase_record received it, for the paths that record it."""

    integration: Integration
    external_id: str
    customer_ref: str
    amount: Decimal
    currency: str
    occurred_at: dt.datetime
    lines: list[dict]
    enroll: bool
    award_points: bool
    fingerprint: str


@dataclass
class PurchaseResult:
    purchase: Purchase
    created: bool

    @property
    def points_earned(self) -> int:
        return self.purchase.points_earned

    @property
    def balance(self) -> int | None:
        return self.purchase.balance_after


def _purchase_existing(integration: Integration, external_id: str, fingerprint: str) -> PurchaseResult | None:
    existing = (
        Purchase.objects.select_related("customer")
        .filter(integration=integration, external_id=external_id)
        .first()
    )
    if existing is None:
        return None
    if existing.request_hash != fingerprint:
        raise Conflict(
            f"Purchase {external_id!r} was already recorded with different data.", code="idempotency_conflict"
        )
    return PurchaseResult(existing, False)


def purchase_record(
    *,
    integration: Integration,
    external_id: str,
    customer_ref: str,
    amount: Decimal,
    currency: str,
    occurred_at: dt.datetime,
    lines: list[dict] | None = None,
    enroll: bool = False,
    award_points: bool = True,
) -> PurchaseResult:
    """Record a purchase and award its points. Idempotent on (integration, external_id):
    the same request again returns the original result; other data under the same id
    raises Conflict. Members earn under the rules in force at `occurred_at`."""
    lines = lines or []
    fingerprint = request_hash(
        {
            "customer": customer_ref,
            "amount": str(rules.money(Decimal(amount))),
            "currency": currency,
            "occurred_at": occurred_at.isoformat(),
            "lines": [{k: str(v) for k, v in sorted(line.items()) if v not in (None, "")} for line in lines],
            "enroll": bool(enroll),
        }
    )
    purchase = _PurchaseRequest(
        integration=integration,
        external_id=external_id,
        customer_ref=customer_ref,
        amount=rules.money(Decimal(amount)),
        currency=currency,
        occurred_at=occurred_at,
        lines=lines,
        enroll=enroll,
        award_points=award_points,
        fingerprint=fingerprint,
    )
    try:
        if connection.vendor == "postgresql" and connection.get_autocommit():
            result = _purchase_record_unlocked(purchase)
            if result is not None:
                return result
        return _purchase_record(purchase)
    except IntegrityError:
        # A concurrent request created the same customer or entry first.
        replay = _purchase_existing(integration, external_id, fingerprint)
        if replay:
            return replay
        raise


# Constants (no input in them): the values go as parameters.
_MEMBER_LOCK_SQL = f"""
SELECT a.balance, a.tier_id, ({selectors.promotions_in_force_sql("%(customer)s")})
FROM rewards_pointsaccount a WHERE a.customer_id = %(customer)s
FOR UPDATE OF a
"""  # noqa: S608
# A member's purchase starts here: the customer by reference, their account locked, and the
# promotions in force for them, in one round trip. No row: unknown, or not a member.
_MEMBER_LOCK_BY_REF_SQL = f"""
SELECT {_CUSTOMER_COLUMNS}, a.balance, a.tier_id, ({selectors.promotions_in_force_sql("c.id")})
FROM accounts_customer c JOIN rewards_pointsaccount a ON a.customer_id = c.id
WHERE c.external_ref = %(ref)s
FOR UPDATE OF a
"""  # noqa: S608


def _account_from_row(customer_id: int, balance: int, tier_id: int | None) -> PointsAccount:
    account = PointsAccount(customer_id=customer_id, balance=balance, tier_id=tier_id)
    if tier_id is not None:
        account.tier = selectors.tier_get(tier_id)
    return account


def _promotions(value) -> list[tuple[str, Decimal]]:
    return [(name, Decimal(multiplier)) for name, multiplier in value or []]


def _member_lock(customer_id: int, *, at: dt.datetime) -> tuple[PointsAccount, list[tuple[str, Decimal]]]:
    """Lock the member's account row and read the promotions in force for them at `at`, in one
    round trip. The tier comes from the program's cached tiers (see selectors.program_get)."""
    with prepared_cursor() as cursor:
        cursor.execute(_MEMBER_LOCK_SQL, {"customer": customer_id, "at": at})
        row = cursor.fetchone()
    if row is None:
        raise NotAMember("This customer is not a member of the loyalty program.")
    balance, tier_id, promotions = row
    return _account_from_row(customer_id, balance, tier_id), _promotions(promotions)


def _member_lock_by_ref(
    external_ref: str, *, at: dt.datetime
) -> tuple[Customer, PointsAccount, list[tuple[str, Decimal]]] | None:
    with prepared_cursor() as cursor:
        cursor.execute(_MEMBER_LOCK_BY_REF_SQL, {"ref": external_ref, "at": at})
        row = cursor.fetchone()
    if row is None:
        return None
    customer = _customer_from_row(row)
    balance, tier_id, promotions = row[len(_CUSTOMER_FIELDS) :]
    return customer, _account_from_row(customer.pk, balance, tier_id), _promotions(promotions)


# The purchase's rows after the purchase itself, shared by the two statements that write one:
# its lines, the earn entry and the entry's lot (data-modifying CTEs hanging off `p`).
_PURCHASE_ROWS_SQL = """
l AS (
    INSERT INTO rewards_purchaseline (purchase_id, sku, category, quantity, amount)
    SELECT p.id, x.sku, x.category, x.quantity, x.amount
    FROM p, jsonb_to_recordset(%(lines)s::jsonb)
        AS x (sku varchar, category varchar, quantity numeric, amount numeric)
), e AS (
    INSERT INTO rewards_ledgerentry (
        account_id, kind, points, balance_after, created_at, idempotency_key, explanation, reason, purchase_id
    )
    SELECT %(customer)s, %(kind)s, %(points)s, %(balance_after)s::integer, %(earned_at)s::timestamptz,
           'purchase:' || p.id || ':earn', %(entry_explanation)s::jsonb, '', p.id
    FROM p WHERE %(credit)s
    RETURNING id
), lot AS (
    INSERT INTO rewards_pointslot (account_id, entry_id, points, remaining, earned_at, expires_at)
    SELECT %(customer)s, e.id, %(lot_points)s, %(lot_points)s, %(earned_at)s::timestamptz,
           %(expires_at)s::timestamptz
    FROM e WHERE %(lot_points)s > 0
)"""
_PURCHASE_COLUMNS = """
        integration_id, external_id, customer_id, amount, currency, occurred_at, refunded_amount,
        points_earned, points_clawed_back, was_member, request_hash, balance_after, explanation, created_at"""
_PURCHASE_VALUES = """
        %(integration)s, %(external_id)s, %(customer)s, %(amount)s, %(currency)s, %(occurred_at)s, 0,
        %(points)s, 0, %(was_member)s, %(hash)s, %(balance_after)s::integer, %(explanation)s::jsonb,
        %(now)s"""

# The locked path's one statement: the purchase with its lines, the earn entry, the entry's lot
# and the new balance, and the member's qualifying spend before it. The purchase goes in with
# ON CONFLICT DO NOTHING on (integration, external_id): when a twin got there first, `p` is
# empty and so is everything that hangs off it, and the caller answers with the twin.
_PURCHASE_WRITE_SQL = f"""
WITH p AS (
    INSERT INTO rewards_purchase ({_PURCHASE_COLUMNS}
    ) VALUES ({_PURCHASE_VALUES}
    )
    ON CONFLICT (integration_id, external_id) DO NOTHING
    RETURNING id
), {_PURCHASE_ROWS_SQL}, a AS (
    UPDATE rewards_pointsaccount SET balance = %(balance_after)s::integer, updated_at = %(now)s
    WHERE customer_id = %(customer)s AND EXISTS (SELECT 1 FROM e)
)
SELECT (SELECT id FROM p), (SELECT id FROM e),
       CASE WHEN %(spend)s THEN (
           SELECT COALESCE(SUM(amount - refunded_amount), 0) FROM rewards_purchase
           WHERE customer_id = %(customer)s AND occurred_at > %(spend_from)s AND occurred_at <= %(as_of)s
       ) END
"""  # noqa: S608 - constants of this module only

# The unlocked path (see _purchase_record_unlocked) reads everything a purchase depends on in
# one statement without a lock: the customer, their account with its row version (xmin: every
# committed UPDATE of the row changes it), the promotions in force, the qualifying spend, and
# the purchase under this id if it was recorded already.
_PURCHASE_READ_SQL = f"""
SELECT {_CUSTOMER_COLUMNS}, a.customer_id, a.balance, a.tier_id, a.xmin::text,
       CASE WHEN a.customer_id IS NOT NULL THEN ({selectors.promotions_in_force_sql("c.id")}) END,
       CASE WHEN a.customer_id IS NOT NULL THEN (
           SELECT COALESCE(SUM(s.amount - s.refunded_amount), 0) FROM rewards_purchase s
           WHERE s.customer_id = c.id AND s.occurred_at > %(spend_from)s AND s.occurred_at <= %(as_of)s
       ) END,
       EXISTS (
           SELECT 1 FROM rewards_purchase r
           WHERE r.integration_id = %(integration)s AND r.external_id = %(external_id)s
       )
FROM accounts_customer c LEFT JOIN rewards_pointsaccount a ON a.customer_id = c.id
WHERE c.external_ref = %(ref)s
"""  # noqa: S608 - constants of this module only

# ... and writes a member's purchase in one statement that first moves the account, only if
# its row is still the version it read (`a` is then empty, and so is everything hanging off
# it: the caller reads again). The balance and a tier upgrade go with the purchase, its
# lines, entry and lot, or none of them. No ON CONFLICT here: a twin recorded since the read
# makes the statement fail on the unique (integration, external_id), which undoes `a` too.
_MEMBER_PURCHASE_WRITE_SQL = f"""
WITH a AS (
    UPDATE rewards_pointsaccount
    SET balance = %(balance_after)s::integer, updated_at = %(now)s,
        tier_id = COALESCE(%(tier_up)s::integer, tier_id),
        tier_changed_at = CASE WHEN %(tier_up)s::integer IS NULL THEN tier_changed_at ELSE %(now)s END
    WHERE customer_id = %(customer)s AND xmin = %(version)s::xid
    RETURNING customer_id
), p AS (
    INSERT INTO rewards_purchase ({_PURCHASE_COLUMNS}
    ) SELECT {_PURCHASE_VALUES}
    FROM a
    RETURNING id
), {_PURCHASE_ROWS_SQL}
SELECT (SELECT id FROM p)
"""  # noqa: S608 - constants of this module only


def _purchase_earn(
    purchase: _PurchaseRequest, customer: Customer, account: PointsAccount | None, promotions=None
) -> rules.EarnResult | None:
    """What the purchase earns under the rules (None: nothing to earn, no account or no award);
    `promotions` when the caller read them already."""
    if account is None or not purchase.award_points:
        return None
    return rules.purchase_points(
        amount=purchase.amount,
        lines=[
            rules.Line(str(line.get("category") or ""), Decimal(str(line["amount"])))
            for line in purchase.lines
        ],
        ctx=selectors.earn_context_get(
            customer=customer, tier=account.tier, at=purchase.occurred_at, promotions=promotions
        ),
    )


def _purchase_write_params(
    purchase: _PurchaseRequest, customer: Customer, account: PointsAccount | None, promotions
) -> dict:
    """Earn under the rules and return the purchase statements' parameters; moves `account`'s
    balance to what it is after this purchase (while in debt, earnings repay it first, as
    _credit does). Shared by the locked and the unlocked path and the shopper's (no account)."""
    earn = _purchase_earn(purchase, customer, account, promotions)
    occurred_at = purchase.occurred_at
    now = timezone.now()
    points = earn.points if earn else 0
    earned_at = min(occurred_at, now)
    explanation = earn.explanation if earn else []
    entry_explanation, lot_points = explanation, points
    if points > 0:
        repaid = min(max(0, -account.balance), points)
        if repaid:
            entry_explanation = [*explanation, {"code": "debt_repaid", "points": repaid}]
        lot_points = points - repaid
        account.balance += points
    as_of = max(occurred_at, now)
    # The lines as one JSON document (four arrays cost psycopg's Python list dumpers more CPU
    # than the rest of the statement's parameters together); numbers as decimal strings.
    lines_json = json.dumps(
        [
            {
                "sku": str(line.get("sku") or "")[:64],
                "category": str(line.get("category") or "")[:64],
                "quantity": str(Decimal(str(line.get("quantity") or 1))),
                "amount": str(Decimal(str(line["amount"]))),
            }
            for line in purchase.lines
        ]
    )
    return {
        "integration": purchase.integration.pk,
        "external_id": purchase.external_id,
        "customer": customer.pk,
        "amount": purchase.amount,
        "currency": purchase.currency,
        "occurred_at": occurred_at,
        "points": points,
        # Member when the shop's system reported it: a member who joins at the till
        # earns on the basket they are paying for, even if it was rung up a minute before.
        "was_member": customer.is_member,
        "hash": purchase.fingerprint,
        "balance_after": account.balance if account else None,
        "explanation": json.dumps(explanation),
        "explanation_list": explanation,
        "now": now,
        "lines": lines_json,
        "kind": Kind.EARN,
        "earned_at": earned_at,
        "entry_explanation": json.dumps(entry_explanation),
        "credit": points > 0,
        "lot_points": lot_points,
        "expires_at": _lot_expiry(earned_at) if lot_points > 0 else None,
        "spend": account is not None,
        "spend_from": as_of - dt.timedelta(days=365),
        "as_of": as_of,
    }


def _purchase_built(params: dict, purchase_id: int, purchase: _PurchaseRequest, customer) -> Purchase:
    """The Purchase a write statement recorded, from its parameters (no read back)."""
    return Purchase(
        pk=purchase_id,
        integration=purchase.integration,
        external_id=params["external_id"],
        customer=customer,
        amount=params["amount"],
        currency=params["currency"],
        occurred_at=params["occurred_at"],
        was_member=params["was_member"],
        request_hash=params["hash"],
        points_earned=params["points"],
        explanation=params["explanation_list"],
        balance_after=params["balance_after"],
        created_at=params["now"],
    )


# Reads before the unlocked path gives way to the locked one (each retry follows a member's
# purchase, refund or redemption that moved the account between the read and the write).
_UNLOCKED_ATTEMPTS = 3


def _purchase_record_unlocked(purchase: _PurchaseRequest) -> PurchaseResult | None:
    """A known customer's purchase in two statements and no transaction around them, or None
    for the locked path (_purchase_record): a new customer, an enrolment, a referred member
    (whose first purchase may owe referral bonuses), a member without an account, or an
    account that kept moving.

    Optimistic concurrency on the member's account row: one statement reads the customer, the
    account and its row version, the promotions and the qualifying spend (no lock, no
    transaction); the rules run in Python; one statement then writes the purchase, its lines,
    entry, lot, new balance and any tier upgrade, only if the account row is still the version
    read. Whatever else moves a member's balance or tier updates that row, and a refund that
    claws nothing back touches it too (purchase_refund), so an unchanged version means the
    read is still the truth about everything this purchase depends on; otherwise nothing was
    written and it reads again. Each statement is its own transaction: PostgreSQL checks the
    deferred foreign keys and commits at its end. Against the locked path this saves the BEGIN
    and COMMIT round trips and the row lock's own write (bench/RESULTS.md, sixth round).
    Only outside a transaction: inside one, a failed statement would abort the caller's."""
    occurred_at = purchase.occurred_at
    # One cursor for the read and the write (and the reads again): creating one is a few per
    # cent of the purchase's Python.
    with prepared_cursor() as cursor:
        for _attempt in range(_UNLOCKED_ATTEMPTS):
            now = timezone.now()
            as_of = max(occurred_at, now)
            cursor.execute(
                _PURCHASE_READ_SQL,
                {
                    "ref": purchase.customer_ref,
                    "at": occurred_at,
                    "spend_from": as_of - dt.timedelta(days=365),
                    "as_of": as_of,
                    "integration": purchase.integration.pk,
                    "external_id": purchase.external_id,
                },
            )
            row = cursor.fetchone()
            if row is None:
                return None
            customer = _customer_from_row(row)
            account_id, balance, tier_id, version, promotions, spend_before, recorded = row[
                len(_CUSTOMER_FIELDS) :
            ]
            if recorded:
                return _purchase_existing(purchase.integration, purchase.external_id, purchase.fingerprint)
            if not customer.is_member:
                if purchase.enroll:
                    return None
                return _shopper_purchase_write(purchase, customer, cursor)
            if account_id is None or (customer.referred_by_id is not None and _referral_bonuses_on()):
                return None
            account = _account_from_row(customer.pk, balance, tier_id)
            params = _purchase_write_params(purchase, customer, account, _promotions(promotions))
            # The statement's spend was read for this very `as_of` only if the clock did not move
            # past a purchase's boundary in between: both use the read's window.
            spend = spend_before + (
                purchase.amount if occurred_at > as_of - dt.timedelta(days=365) else Decimal("0")
            )
            tier_up = _tier_upgrade_target(account, spend)
            params["tier_up"] = tier_up.pk if tier_up else None
            params["version"] = version
            cursor.execute(_MEMBER_PURCHASE_WRITE_SQL, params)
            (purchase_id,) = cursor.fetchone()
            if purchase_id is None:
                continue  # the account moved since the read: nothing was written
            if tier_up is not None:
                account.tier = tier_up
            return PurchaseResult(_purchase_built(params, purchase_id, purchase, customer), True)
    return None


def _shopper_purchase_write(purchase: _PurchaseRequest, customer: Customer, cursor) -> PurchaseResult:
    """A shopper's (non-member's) purchase: recorded for analytics, no account, no points
    (`cursor`: the unlocked path's prepared_cursor)."""
    params = _purchase_write_params(purchase, customer, None, [])
    cursor.execute(_PURCHASE_WRITE_SQL, params)
    purchase_id, _entry_id, _spend = cursor.fetchone()
    if purchase_id is None:
        # A twin was recorded first (a retry, or the same request sent twice at once).
        return _purchase_replay(purchase)
    return PurchaseResult(_purchase_built(params, purchase_id, purchase, customer), True)


def _purchase_replay(purchase: _PurchaseRequest) -> PurchaseResult:
    replay = _purchase_existing(purchase.integration, purchase.external_id, purchase.fingerprint)
    if replay is None:  # cannot happen: the conflict was on this very key
        raise Conflict(
            f"Purchase {purchase.external_id!r} could not be recorded.", code="idempotency_conflict"
        )
    return replay


@transaction.atomic
def _purchase_record(purchase: _PurchaseRequest) -> PurchaseResult:
    """The locked path: the member's account row locked for the whole transaction (new
    customers, enrolments, referral bonuses, calls inside a caller's transaction, and the
    unlocked path's last resort)."""
    if connection.vendor != "postgresql":
        # The demo's SQLite: the same purchase through the ORM (the statements below are PostgreSQL's).
        return _purchase_record_portable(purchase)
    occurred_at = purchase.occurred_at
    # Twins of a member's purchase wait at the account lock; the insert below then finds the
    # first one's row.
    member = _member_lock_by_ref(purchase.customer_ref, at=occurred_at)
    if member is not None and member[0].is_member:
        customer, account, promotions = member
    else:
        customer = _purchase_customer(purchase)
        account, promotions = (None, [])
        if customer.is_member:
            account, promotions = _member_lock(customer.pk, at=occurred_at)
    balance_before = account.balance if account else None
    params = _purchase_write_params(purchase, customer, account, promotions)
    with prepared_cursor() as cursor:
        cursor.execute(_PURCHASE_WRITE_SQL, params)
        purchase_id, _entry_id, spend_before = cursor.fetchone()
    if purchase_id is None:
        # A twin was recorded first (a retry, or the same request sent twice at once).
        if account is not None:
            account.balance = balance_before
        return _purchase_replay(purchase)
    recorded = _purchase_built(params, purchase_id, purchase, customer)
    if account is None:
        return PurchaseResult(recorded, True)
    # The statement's snapshot did not include the purchase it inserted.
    spend = spend_before + (purchase.amount if occurred_at > params["spend_from"] else Decimal("0"))
    _tier_upgrade_check(account, customer, as_of=params["as_of"], spend=spend)
    if _referral_bonus_check(account, customer, purchase=recorded):
        recorded.balance_after = account.balance
        Purchase.objects.filter(pk=recorded.pk).update(balance_after=account.balance)
    return PurchaseResult(recorded, True)


def _purchase_customer(purchase: _PurchaseRequest) -> Customer:
    """The purchase's customer, created as a shopper if new and enrolled if the request asks."""
    customer, _created = customer_get_or_create(external_ref=purchase.customer_ref)
    if purchase.enroll and not customer.is_member:
        customer, _ = customer_enroll(customer=customer, at=min(purchase.occurred_at, timezone.now()))
    return customer


def _purchase_record_portable(purchase: _PurchaseRequest) -> PurchaseResult:
    """_purchase_record through the ORM, for databases other than PostgreSQL (the demo's SQLite,
    where one writer at a time holds the database): the same rows, entries, lots and answers."""
    customer = _purchase_customer(purchase)
    occurred_at, lines = purchase.occurred_at, purchase.lines
    account = None
    if customer.is_member:
        account = _account_lock(customer.pk)
        replay = _purchase_existing(purchase.integration, purchase.external_id, purchase.fingerprint)
        if replay:
            return replay
    earn = _purchase_earn(purchase, customer, account)
    recorded = Purchase.objects.create(
        integration=purchase.integration,
        external_id=purchase.external_id,
        customer=customer,
        amount=purchase.amount,
        currency=purchase.currency,
        occurred_at=occurred_at,
        was_member=customer.is_member,
        request_hash=purchase.fingerprint,
        points_earned=earn.points if earn else 0,
        explanation=earn.explanation if earn else [],
        balance_after=account.balance if account else None,
    )
    if lines:
        PurchaseLine.objects.bulk_create(
            PurchaseLine(
                purchase=recorded,
                sku=str(line.get("sku") or "")[:64],
                category=str(line.get("category") or "")[:64],
                quantity=Decimal(str(line.get("quantity") or 1)),
                amount=Decimal(str(line["amount"])),
            )
            for line in lines
        )
    if account is None:
        return PurchaseResult(recorded, True)
    now = timezone.now()
    if earn and earn.points > 0:
        _credit(
            account,
            kind=Kind.EARN,
            points=earn.points,
            key=f"purchase:{recorded.pk}:earn",
            explanation=earn.explanation,
            at=min(occurred_at, now),
            purchase=recorded,
        )
    _tier_upgrade_check(account, customer, as_of=max(occurred_at, now))
    _referral_bonus_check(account, customer, purchase=recorded)
    recorded.balance_after = account.balance
    Purchase.objects.filter(pk=recorded.pk).update(balance_after=account.balance)
    return PurchaseResult(recorded, True)


_TIER_UPGRADE_SQL = (
    "UPDATE rewards_pointsaccount SET tier_id = %(tier)s, tier_changed_at = %(now)s "
    "WHERE customer_id = %(customer)s"
)


def _tier_upgrade_target(account: PointsAccount, spend: Decimal) -> Tier | None:
    """The tier a purchase that brings the member's qualifying spend to `spend` upgrades them
    to, or None (downgrades wait for the nightly job)."""
    tiers = program_get()["tiers"]
    if not tiers:
        return None
    best_id = rules.tier_for_spend(spend, [(t.pk, t.min_qualifying_spend) for t in tiers])
    if best_id is None:
        return None
    best = next(t for t in tiers if t.pk == best_id)
    current_threshold = account.tier.min_qualifying_spend if account.tier else Decimal("-1")
    return best if best.min_qualifying_spend > current_threshold else None


def _tier_upgrade_check(
    account: PointsAccount, customer: Customer, *, as_of: dt.datetime, spend: Decimal | None = None
) -> None:
    """Upgrade on the purchase that crosses a threshold, in the caller's transaction."""
    if not program_get()["tiers"]:
        return
    if spend is None:
        spend = qualifying_spend(customer_id=customer.pk, as_of=as_of)
    best = _tier_upgrade_target(account, spend)
    if best is not None:
        account.tier = best
        # A statement of the purchase's hot path: prepared (the ORM's update costs several
        # times more of the server's CPU than the row change itself).
        with prepared_cursor() as cursor:
            cursor.execute(
                _TIER_UPGRADE_SQL, {"tier": best.pk, "now": timezone.now(), "customer": account.pk}
            )


def referral_keys(customer_id: int) -> tuple[str, str]:
    """The ledger keys of a referred member's two referral bonuses (referee, referrer): the same
    for the API's purchases and the imports', so that either gives them once."""
    return f"referral:{customer_id}:referee", f"referral:{customer_id}:referrer"


def referral_referrer_explanation(*, first_name: str, external_ref: str) -> list[dict]:
    return [{"code": "referral_referrer", "friend": first_name or external_ref}]


def _referral_bonuses_on() -> bool:
    program = program_get()["rules"]
    return bool(program.referral_bonus_referee or program.referral_bonus_referrer)


def _referral_bonus_check(account: PointsAccount, customer: Customer, *, purchase: Purchase) -> bool:
    """After a referred member's first purchase as a member, both sides get their bonus, once.
    True when this member's balance changed."""
    if customer.referred_by_id is None or not _referral_bonuses_on():
        return False
    program = program_get()["rules"]
    key_referee, key_referrer = referral_keys(customer.pk)
    # Either side's entry means the bonus was given (one of the two may be 0 and have none).
    if LedgerEntry.objects.filter(idempotency_key__in=[key_referee, key_referrer]).exists():
        return False
    referrer_account = PointsAccount.objects.select_for_update().filter(pk=customer.referred_by_id).first()
    # Credited when the qualifying purchase happened, so back-dated history stays in order.
    now = min(purchase.occurred_at, timezone.now())
    if program.referral_bonus_referee:
        _credit(
            account,
            kind=Kind.BONUS,
            points=program.referral_bonus_referee,
            key=key_referee,
            explanation=[{"code": "referral_referee"}],
            at=now,
            purchase=purchase,
        )
    if referrer_account is not None and program.referral_bonus_referrer:
        _credit(
            referrer_account,
            kind=Kind.BONUS,
            points=program.referral_bonus_referrer,
            key=key_referrer,
            explanation=referral_referrer_explanation(
                first_name=customer.first_name, external_ref=customer.external_ref
            ),
            at=now,
            purchase=purchase,
        )
    return bool(program.referral_bonus_referee)


@dataclass
class RefundResult:
    refund: Refund
    created: bool


@transaction.atomic
def purchase_refund(
    *,
    integration: Integration,
    purchase_external_id: str,
    refund_id: str,
    amount: Decimal,
    occurred_at: dt.datetime | None = None,
) -> RefundResult:
    """Refund part or all of a purchase and claw back its points proportionally, even
    if they were spent (the balance may go negative: points debt). Idempotent on
    (integration, refund_id)."""
    amount = rules.money(Decimal(amount))
    fingerprint = request_hash({"purchase": purchase_external_id, "amount": str(amount)})
    purchase = Purchase.objects.filter(integration=integration, external_id=purchase_external_id).first()
    if purchase is None:
        raise NotFound(f"No purchase {purchase_external_id!r} from this integration.")
    account = None
    if PointsAccount.objects.filter(pk=purchase.customer_id).exists():
        account = _account_lock(purchase.customer_id)
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    existing = Refund.objects.filter(integration=integration, refund_id=refund_id).first()
    if existing:
        if existing.request_hash != fingerprint:
            raise Conflict(
                f"Refund {refund_id!r} was already recorded with different data.", code="idempotency_conflict"
            )
        return RefundResult(existing, False)
    if amount <= 0:
        raise DomainError(
            "The refund amount must be positive.", code="invalid_amount", fields={"amount": ["positive"]}
        )
    refundable = purchase.amount - purchase.refunded_amount
    if amount > refundable:
        raise DomainError(
            f"Only {refundable} of this purchase is left to refund.",
            code="refund_exceeds_purchase",
            fields={"amount": [f"at most {refundable}"]},
        )
    claw = rules.clawback_points(
        points_earned=purchase.points_earned,
        amount=purchase.amount,
        refunded_before=purchase.refunded_amount,
        refund=amount,
        clawed_before=purchase.points_clawed_back,
    )
    refund = Refund.objects.create(
        integration=integration,
        refund_id=refund_id,
        purchase=purchase,
        amount=amount,
        points_clawed_back=claw,
        request_hash=fingerprint,
        occurred_at=occurred_at or timezone.now(),
    )
    Purchase.objects.filter(pk=purchase.pk).update(
        refunded_amount=F("refunded_amount") + amount, points_clawed_back=F("points_clawed_back") + claw
    )
    if account is not None and claw > 0:
        _debit(
            account,
            kind=Kind.CLAWBACK,
            points=claw,
            key=f"refund:{refund.pk}:clawback",
            explanation=[{"code": "clawback", "refund": str(amount), "purchase": purchase.external_id}],
            at=timezone.now(),
            allow_debt=True,
            purchase=purchase,
            refund=refund,
        )
    elif account is not None:
        # Nothing to claw back, but the member's qualifying spend fell: a new version of the
        # account row tells a purchase read before this refund to read again (see
        # _purchase_record_unlocked), as a clawback's balance change does.
        PointsAccount.objects.filter(pk=account.pk).update(updated_at=timezone.now())
    refund.balance_after = account.balance if account else None
    Refund.objects.filter(pk=refund.pk).update(balance_after=refund.balance_after)
    return RefundResult(refund, True)


# --- Events ---------------------------------------------------------------------------


def _period_bounds(period: str, at: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """The cap period (program time zone) that `at` falls in, as [start, next period's start);
    None for a rule without a cap period."""
    local = timezone.localtime(at, program_tz()).date()
    if period == EventRule.CapPeriod.DAY:
        start, end = local, local + dt.timedelta(days=1)
    elif period == EventRule.CapPeriod.WEEK:
        start = local - dt.timedelta(days=local.weekday())
        end = start + dt.timedelta(days=7)
    elif period == EventRule.CapPeriod.MONTH:
        start = local.replace(day=1)
        end = (start + dt.timedelta(days=31)).replace(day=1)
    elif period == EventRule.CapPeriod.YEAR:
        start = local.replace(month=1, day=1)
        end = start.replace(year=start.year + 1)
    else:
        return None
    return _day_start(start), _day_start(end)


@dataclass
class EventResult:
    event: CustomerEvent
    created: bool


def event_record(
    *,
    integration: Integration,
    external_id: str,
    customer_ref: str,
    event_type: str,
    data: dict,
    occurred_at: dt.datetime | None = None,
) -> EventResult:
    """Record a custom event; a member earns the rule's fixed points for its type,
    within the rule's cap per period. Idempotent on (integration, external_id): the same event
    again answers the original, and other data or another `occurred_at` given for it is a
    conflict (a retry without `occurred_at` is the same event)."""
    given_at = occurred_at
    occurred_at = occurred_at or timezone.now()
    # occurred_at is not in the stored fingerprint (it is optional, and the fingerprints of events
    # already recorded must keep matching); it is compared with the recorded one when given.
    fingerprint = request_hash({"customer": customer_ref, "type": event_type, "data": data})

    def existing():
        event = CustomerEvent.objects.filter(integration=integration, external_id=external_id).first()
        if event and (
            event.request_hash != fingerprint or (given_at is not None and event.occurred_at != given_at)
        ):
            raise Conflict(
                f"Event {external_id!r} was already recorded with different data.",
                code="idempotency_conflict",
            )
        return EventResult(event, False) if event else None

    replay = existing()
    if replay:
        return replay
    try:
        with transaction.atomic():
            customer, _ = customer_get_or_create(external_ref=customer_ref)
            account = _account_lock(customer.pk) if customer.is_member else None
            replay = existing()
            if replay:
                return replay
            event = CustomerEvent.objects.create(
                integration=integration,
                external_id=external_id,
                customer=customer,
                event_type=event_type,
                data=data,
                occurred_at=occurred_at,
                request_hash=fingerprint,
            )
            rule = EventRule.objects.filter(event_type=event_type, is_active=True).first()
            if account is not None and rule is not None:
                # Counted behind the account lock taken above, so two events of one member
                # cannot both see room under the cap. Only the event's own period counts: a
                # back-dated event is not held against events of later periods.
                period = _period_bounds(rule.cap_period, occurred_at)
                done = CustomerEvent.objects.filter(
                    customer=customer, event_type=event_type, points_awarded__gt=0
                )
                if period is not None:
                    done = done.filter(occurred_at__gte=period[0], occurred_at__lt=period[1])
                result = rules.event_points(
                    rule_points=rule.points, cap_count=rule.cap_count, already_awarded_in_period=done.count()
                )
                explanation = [
                    {**line, "name": rule.name, "event_type": event_type} for line in result.explanation
                ]
                if result.points > 0:
                    _credit(
                        account,
                        kind=Kind.BONUS,
                        points=result.points,
                        key=f"event:{event.pk}",
                        explanation=explanation,
                        at=timezone.now(),
                        event=event,
                    )
                CustomerEvent.objects.filter(pk=event.pk).update(
                    points_awarded=result.points, explanation=explanation
                )
                event.points_awarded, event.explanation = result.points, explanation
            return EventResult(event, True)
    except IntegrityError:
        replay = existing()
        if replay:
            return replay
        raise


# --- Rewards and redemptions ---------------------------------------------------------

VOUCHER_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def voucher_code_new() -> str:
    """12 characters from 32 (60 bits from the OS's CSPRNG), shown as XXXX-XXXX-XXXX."""
    raw = "".join(secrets.choice(VOUCHER_ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


@dataclass
class RedeemResult:
    redemption: Redemption
    created: bool


@transaction.atomic
def reward_redeem(
    *,
    customer: Customer,
    reward_id: int,
    idempotency_key: str | None = None,
    integration: Integration | None = None,
    now: dt.datetime | None = None,
) -> RedeemResult:
    """Exchange points for a reward's voucher. Never makes a balance negative; refused
    while in points debt. Idempotent on (customer, idempotency_key)."""
    now = now or timezone.now()
    account = _account_lock(customer.pk)
    if idempotency_key:
        existing = Redemption.objects.filter(customer=customer, idempotency_key=idempotency_key).first()
        if existing:
            if existing.reward_id != reward_id:
                raise Conflict(
                    "This idempotency key was used for another reward.", code="idempotency_conflict"
                )
            return RedeemResult(existing, False)
    reward = Reward.objects.filter(pk=reward_id).first()
    if reward is None:
        raise NotFound("No such reward.")
    if reward.stock is not None:
        reward = Reward.objects.select_for_update().get(pk=reward_id)
    if (
        not reward.is_active
        or (reward.active_from and reward.active_from > now)
        or (reward.active_until and reward.active_until <= now)
    ):
        raise RewardUnavailable("This reward is not available now.")
    if reward.stock is not None and reward.stock <= 0:
        raise RewardUnavailable("This reward is out of stock.", code="out_of_stock")
    if reward.min_tier_id and (
        account.tier is None or account.tier.min_qualifying_spend < reward.min_tier.min_qualifying_spend
    ):
        raise RewardUnavailable(f"This reward needs the {reward.min_tier.name} tier.", code="tier_too_low")
    if reward.per_customer_limit is not None:
        taken = (
            Redemption.objects.filter(customer=customer, reward=reward)
            .exclude(state=Redemption.State.CANCELLED)
            .count()
        )
        if taken >= reward.per_customer_limit:
            raise RewardUnavailable(
                "The limit for this reward per customer is reached.", code="limit_reached"
            )
    _expire_due_lots(account, before=now)
    if account.balance < 0:
        raise PointsDebt(f"There is a points debt of {-account.balance} to repay before redeeming.")
    if account.balance < reward.cost_points:
        raise InsufficientPoints(
            f"This reward costs {reward.cost_points} points; the balance is {account.balance}."
        )
    redemption = Redemption.objects.create(
        customer=customer,
        reward=reward,
        points=reward.cost_points,
        voucher_code=voucher_code_new(),
        integration=integration,
        idempotency_key=idempotency_key,
        expires_at=now + dt.timedelta(days=reward.validity_days) if reward.validity_days else None,
    )
    _debit(
        account,
        kind=Kind.REDEEM,
        points=reward.cost_points,
        key=f"redemption:{redemption.pk}",
        explanation=[{"code": "redeem", "reward": reward.name}],
        at=now,
        allow_debt=False,
        redemption=redemption,
    )
    if reward.stock is not None:
        Reward.objects.filter(pk=reward.pk).update(stock=F("stock") - 1)
    return RedeemResult(redemption, True)


@transaction.atomic
def bonus_award(*, customer: Customer, points: int, key: str, name: str) -> LedgerEntry | None:
    """Bonus points from outside the earning rules (a campaign's gift), explained as a
    gift named `name`. Idempotent on `key`; nothing for a shopper who is not a member."""
    if points <= 0:
        raise DomainError("A gift must be a positive number of points.", code="invalid_points")
    if not PointsAccount.objects.filter(pk=customer.pk).exists():
        return None
    account = _account_lock(customer.pk)
    existing = LedgerEntry.objects.filter(idempotency_key=key).first()
    if existing:
        return existing
    return _credit(
        account,
        kind=Kind.BONUS,
        points=points,
        key=key,
        explanation=[{"code": "gift", "name": name}],
        at=timezone.now(),
    )


@transaction.atomic
def voucher_gift(*, customer: Customer, reward_id: int, key: str) -> Redemption | None:
    """A free voucher for a reward (a campaign's offer): no points move. Idempotent on
    (customer, key); None when the reward is not available (inactive, out of stock)."""
    existing = Redemption.objects.filter(customer=customer, idempotency_key=key).first()
    if existing:
        return existing
    reward = Reward.objects.select_for_update().filter(pk=reward_id, is_active=True).first()
    if reward is None or (reward.stock is not None and reward.stock <= 0):
        return None
    now = timezone.now()
    redemption = Redemption.objects.create(
        customer=customer,
        reward=reward,
        points=0,
        voucher_code=voucher_code_new(),
        idempotency_key=key,
        expires_at=now + dt.timedelta(days=reward.validity_days) if reward.validity_days else None,
    )
    if reward.stock is not None:
        Reward.objects.filter(pk=reward.pk).update(stock=F("stock") - 1)
    return redemption


def redemption_cancel(
    *, redemption_id: int, reason: str = "", customer_id: int | None = None, now: dt.datetime | None = None
) -> Redemption:
    """Cancel an issued voucher and return its points (a reversal entry and a new lot
    that expires when the latest of the spent lots would have). Idempotent.

    A voucher past its validity is expired, as vouchers_expire would have done before this
    call (no points back), and refused as any expired voucher is; the expiry is committed
    before the refusal is raised, so it stays."""
    now = now or timezone.now()
    with transaction.atomic():
        redemption = Redemption.objects.filter(pk=redemption_id).first()
        if redemption is None or (customer_id is not None and redemption.customer_id != customer_id):
            raise NotFound("No such redemption.")
        # A campaign's gift (voucher_gift) moved no points: the voucher's own lock is enough, and
        # its customer need not be a member.
        account = _account_lock(redemption.customer_id) if redemption.points else None
        redemption = (
            Redemption.objects.select_for_update(of=("self",)).select_related("reward").get(pk=redemption_id)
        )
        _voucher_expire_if_due(redemption, now=now)
        if redemption.state == Redemption.State.CANCELLED:
            return redemption
        if redemption.state == Redemption.State.ISSUED:
            return _redemption_cancel_issued(account, redemption, reason=reason, now=now)
    raise Conflict(f"This voucher is {redemption.state} and cannot be cancelled.", code="not_cancellable")


def _redemption_cancel_issued(
    account: PointsAccount | None, redemption: Redemption, *, reason: str, now: dt.datetime
) -> Redemption:
    """Return an issued voucher's points and mark it cancelled (account and voucher locked; a
    gift, which cost no points, has no entry to reverse and no account locked)."""
    if redemption.points:
        redeem_entry = LedgerEntry.objects.get(idempotency_key=f"redemption:{redemption.pk}")
        expiries = list(
            LotConsumption.objects.filter(entry=redeem_entry).values_list("lot__expires_at", flat=True)
        )
        expires_at = None if (not expiries or None in expiries) else max(expiries)
        _credit(
            account,
            kind=Kind.REVERSAL,
            points=redemption.points,
            key=f"redemption:{redemption.pk}:cancel",
            explanation=[{"code": "reversal", "reward": redemption.reward.name}],
            at=now,
            expires_at=expires_at,
            redemption=redemption,
            reverses=redeem_entry,
        )
    Redemption.objects.filter(pk=redemption.pk).update(
        state=Redemption.State.CANCELLED, cancelled_at=now, cancel_reason=reason[:200]
    )
    if redemption.reward.stock is not None:
        Reward.objects.filter(pk=redemption.reward_id).update(stock=F("stock") + 1)
    redemption.refresh_from_db()
    return redemption


def voucher_use(*, code: str, now: dt.datetime | None = None) -> Redemption:
    """Mark a voucher used at the point of sale. Refused when used, cancelled or expired.

    A voucher past its validity is expired, as vouchers_expire would have done before this
    call, and refused as any expired voucher is (409 voucher_expired); the expiry is committed
    before the refusal is raised, so it stays."""
    now = now or timezone.now()
    normalised = code.strip().upper()
    with transaction.atomic():
        redemption = Redemption.objects.select_for_update().filter(voucher_code=normalised).first()
        if redemption is None:
            raise NotFound("No such voucher.")
        _voucher_expire_if_due(redemption, now=now)
        if redemption.state == Redemption.State.ISSUED:
            Redemption.objects.filter(pk=redemption.pk).update(state=Redemption.State.USED, used_at=now)
            redemption.refresh_from_db()
            return redemption
    raise Conflict(
        f"This voucher is {redemption.state}"
        + (f" (used {redemption.used_at.isoformat()})." if redemption.used_at else "."),
        code=f"voucher_{redemption.state}",
    )


# --- Staff corrections --------------------------------------------------------------


@transaction.atomic
def points_adjust(
    *, customer: Customer, points: int, reason: str, staff_user, idempotency_key: str | None = None
) -> LedgerEntry:
    """A staff correction with a required reason. A negative correction may leave
    points debt (e.g. taking back a bonus given by mistake and already spent).
    Idempotent on `idempotency_key` when given."""
    if not points:
        raise DomainError(
            "An adjustment must change the balance.", code="zero_points", fields={"points": ["not 0"]}
        )
    if not (reason or "").strip():
        raise DomainError("A reason is required.", code="reason_required", fields={"reason": ["required"]})
    account = _account_lock(customer.pk)
    key = f"adjust:{idempotency_key}" if idempotency_key else f"adjust:{customer.pk}:{secrets.token_hex(8)}"
    existing = LedgerEntry.objects.filter(idempotency_key=key).first()
    if existing:
        return existing
    common = {
        "key": key,
        "explanation": [{"code": "adjust", "reason": reason.strip()}],
        "at": timezone.now(),
        "staff_user": staff_user,
        "reason": reason.strip(),
    }
    if points > 0:
        return _credit(account, kind=Kind.ADJUST, points=points, **common)
    return _debit(account, kind=Kind.ADJUST, points=-points, allow_debt=True, **common)


# --- Scheduled jobs (each idempotent for its date) -----------------------------------


def points_expire(*, on_date: dt.date) -> dict:
    """Expire what is left of every lot whose validity ended before `on_date` starts."""
    before = _day_start(on_date)
    account_ids = list(
        PointsLot.objects.filter(remaining__gt=0, expires_at__lte=before)
        .values_list("account_id", flat=True)
        .distinct()
    )
    accounts = points = 0
    for account_id in account_ids:
        with transaction.atomic():
            account = _account_lock(account_id)
            expired = _expire_due_lots(account, before=before)
        if expired:
            accounts += 1
            points += expired
    return {"date": on_date.isoformat(), "accounts": accounts, "points": points}


def birthday_bonuses_award(*, on_date: dt.date) -> dict:
    """The birthday bonus, once per member per year, to members whose birthday is `on_date`."""
    bonus = program_get()["rules"].birthday_bonus
    if not bonus:
        return {"date": on_date.isoformat(), "awarded": 0}
    days = [(on_date.month, on_date.day)]
    if (on_date.month, on_date.day) == (2, 28) and not _is_leap(on_date.year):
        days.append((2, 29))
    condition = Q()
    for month, day in days:
        condition |= Q(birthday__month=month, birthday__day=day)
    candidates = Customer.objects.filter(condition, enrolled_at__isnull=False, points_account__isnull=False)
    awarded = 0
    for customer in candidates.only("pk", "birthday").iterator():
        key = f"birthday:{customer.pk}:{on_date.year}"
        with transaction.atomic():
            account = _account_lock(customer.pk)
            if _entry_exists(key):
                continue
            _credit(
                account,
                kind=Kind.BONUS,
                points=bonus,
                key=key,
                explanation=[{"code": "birthday_bonus", "year": on_date.year}],
                at=timezone.now(),
            )
            awarded += 1
    return {"date": on_date.isoformat(), "awarded": awarded}


def _is_leap(year: int) -> bool:
    import calendar

    return calendar.isleap(year)


def tiers_recalculate(*, on_date: dt.date) -> dict:
    """Set every member's tier from their qualifying spend in the 365 days before `on_date`
    (downgrades happen here; upgrades also happen on the purchase that crosses)."""
    tiers = program_get()["tiers"]
    if not tiers:
        return {"date": on_date.isoformat(), "changed": 0}
    as_of = _day_start(on_date)
    spend_by_customer = dict(
        Purchase.objects.filter(occurred_at__gt=as_of - dt.timedelta(days=365), occurred_at__lte=as_of)
        .values("customer_id")
        .annotate(spend=Sum(F("amount") - F("refunded_amount")))
        .values_list("customer_id", "spend")
    )
    thresholds = [(t.pk, t.min_qualifying_spend) for t in tiers]
    changed = 0
    for customer_id, tier_id in PointsAccount.objects.values_list("customer_id", "tier_id").iterator():
        target = rules.tier_for_spend(spend_by_customer.get(customer_id) or Decimal("0"), thresholds)
        if target == tier_id:
            continue
        with transaction.atomic():
            account = _account_lock(customer_id)
            spend = qualifying_spend(customer_id=customer_id, as_of=as_of)
            target = rules.tier_for_spend(spend, thresholds)
            if target != account.tier_id:
                PointsAccount.objects.filter(pk=customer_id).update(
                    tier_id=target, tier_changed_at=timezone.now()
                )
                changed += 1
    return {"date": on_date.isoformat(), "changed": changed}


def _vouchers_due(now: dt.datetime):
    """Issued vouchers whose validity ended by `now`: what vouchers_expire expires."""
    return Redemption.objects.filter(state=Redemption.State.ISSUED, expires_at__lte=now)


def vouchers_expire(*, now: dt.datetime | None = None) -> int:
    """Issued vouchers past their validity become expired (their points are not returned).
    Idempotent: an expired voucher is not issued any more."""
    return _vouchers_due(now or timezone.now()).update(state=Redemption.State.EXPIRED)


def _voucher_expire_if_due(redemption: Redemption, *, now: dt.datetime) -> None:
    """vouchers_expire for one (locked) voucher: the services that meet a voucher past its
    validity before the nightly job did expire it just as the job would, so that what happens
    to it never depends on which came first. A voucher still valid costs no statement."""
    due = (
        redemption.state == Redemption.State.ISSUED and redemption.expires_at and redemption.expires_at <= now
    )
    if due and _vouchers_due(now).filter(pk=redemption.pk).update(state=Redemption.State.EXPIRED):
        redemption.state = Redemption.State.EXPIRED


# --- Integrations ---------------------------------------------------------------------


IMPORT_INTEGRATION_NAME = "history-import"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def integration_token_create(*, name: str) -> tuple[Integration, str]:
    """Create an integration (or give an existing one a new token); return the token, shown once."""
    if name == IMPORT_INTEGRATION_NAME:
        raise DomainError("The history-import integration records CSV imports and takes no API token.")
    token = "lyt_" + secrets.token_urlsafe(32)
    integration, _ = Integration.objects.get_or_create(name=name)
    integration.token_hash = token_hash(token)
    integration.token_prefix = token[:10]
    integration.is_active = True
    integration.save()
    return integration, token


def integration_for_import() -> Integration:
    """The integration under which history imports are recorded (it has no token)."""
    integration, _ = Integration.objects.get_or_create(
        name=IMPORT_INTEGRATION_NAME, defaults={"is_active": False}
    )
    return integration
