"""Points for imported purchases, a batch at a time (`import_purchases --award-points` on PostgreSQL).

The guarantee: the ledger a batch writes is the one `services.purchase_record` writes for the
same purchases recorded one by one in file order: the same earn entries with the same
explanations (the same rules function, `rules.purchase_points`, under the tier, promotions
and rules in force), debt repaid first, the same lots and expiry, the tier upgrade on the
purchase that crosses a threshold (later purchases of the batch earn under the new tier),
the referral bonuses on a referred member's first purchase, the same balances after each
purchase, entries in the same order. tests/rewards/test_import_award.py holds the two equal.

How: the accounts of the batch's members (and of their referrers) are locked FOR UPDATE in id
order, as the service locks one; what the rules need is read in a few set-based queries
(balances and tiers, purchases already recorded, qualifying spend, promotions, referral
entries); the points are computed in Python purchase by purchase in file order; purchases,
lines, entries and lots are written with COPY and the balances with one UPDATE, all in one
transaction. Anything unexpected at write time (a unique key taken meanwhile) sends the batch
through the service one by one instead.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.models import Customer

from . import rules, selectors, services
from .models import LedgerEntry

if TYPE_CHECKING:
    from .importing import BadRow, ImportReport, _PurchaseRow

Kind = LedgerEntry.Kind
SPEND_WINDOW = dt.timedelta(days=365)


def import_transaction(cursor) -> None:
    """Settings of an import's transaction (SET LOCAL: they end with it).

    - synchronous_commit off: the commit does not wait for the WAL to reach the disk. Safe for
      imports, which are idempotent: a crash can lose the last chunks committed (never part of
      one), and running the same file again writes exactly those.
    - enable_seqscan off: every lookup of an import is by a unique or leading index column, one
      per row of a chunk (the stage has no index and is still read whole). A table that was
      small when last analysed (the first import into a new database) would otherwise be read
      whole once per row.
    - jit off: statements over a chunk run for milliseconds; compiling them took longer (and
      enable_seqscan's penalty on the stage's cost always asked for it).
    """
    cursor.execute(IMPORT_TRANSACTION_SQL)


IMPORT_TRANSACTION_SQL = (
    "SET LOCAL synchronous_commit = off; SET LOCAL enable_seqscan = off; SET LOCAL jit = off"
)


@dataclass(slots=True)
class CustomerFacts:
    """What the import needs to know of a customer."""

    id: int
    external_ref: str
    enrolled_at: dt.datetime | None
    referred_by_id: int | None
    first_name: str

    def member_at(self, at: dt.datetime) -> bool:
        return self.enrolled_at is not None and self.enrolled_at <= at


# LATERAL … LIMIT 1: one probe of the unique index per reference, whatever the planner guesses.
_CUSTOMERS_SQL = """
SELECT r.ref, c.id, c.enrolled_at, c.referred_by_id, c.first_name
FROM unnest(%s::varchar[]) AS r (ref)
LEFT JOIN LATERAL (
    SELECT c.id, c.enrolled_at, c.referred_by_id, c.first_name FROM accounts_customer c
    WHERE c.external_ref = r.ref LIMIT 1
) c ON true
"""


def customers_get(cursor, refs: set[str]) -> dict[str, CustomerFacts | None]:
    """Each reference's customer, None for those unknown."""
    cursor.execute(_CUSTOMERS_SQL, [list(refs)])
    return {
        ref: CustomerFacts(pk, ref, enrolled_at, referred_by_id, first_name) if pk is not None else None
        for ref, pk, enrolled_at, referred_by_id, first_name in cursor.fetchall()
    }


# --- Reading what the rules need, for the whole batch --------------------------------------

_ACCOUNTS_LOCK_SQL = """
SELECT customer_id, balance, tier_id FROM rewards_pointsaccount
WHERE customer_id = ANY(%s) ORDER BY customer_id FOR UPDATE
"""
# One index probe per id or member (an = ANY(…) over a range index could read a whole year).
_RECORDED_SQL = """
SELECT x.external_id, p.request_hash
FROM unnest(%s::varchar[]) AS x (external_id)
CROSS JOIN LATERAL (
    SELECT p.request_hash FROM rewards_purchase p
    WHERE p.integration_id = %s AND p.external_id = x.external_id LIMIT 1
) p
"""
_SPEND_SQL = """
SELECT x.id, (
    SELECT COALESCE(SUM(p.amount - p.refunded_amount), 0) FROM rewards_purchase p
    WHERE p.customer_id = x.id AND p.occurred_at > %s AND p.occurred_at <= %s
)
FROM unnest(%s::bigint[]) AS x (id)
"""
_KEYS_SQL = "SELECT idempotency_key FROM rewards_ledgerentry WHERE idempotency_key = ANY(%s)"
# What selectors.promotions_in_force_sql answers for one member at one time, for all the batch.
_PROMOTIONS_SQL = """
SELECT p.id, p.name, p.multiplier::text, p.starts_at, p.ends_at,
       EXISTS (SELECT 1 FROM rewards_promotion_customers pc WHERE pc.promotion_id = p.id)
FROM rewards_promotion p
WHERE p.is_active AND p.starts_at <= %s AND p.ends_at > %s
"""
_PROMOTION_CUSTOMERS_SQL = """
SELECT promotion_id, customer_id FROM rewards_promotion_customers
WHERE promotion_id = ANY(%s) AND customer_id = ANY(%s)
"""


@dataclass(slots=True)
class _Account:
    customer_id: int
    balance: int
    tier_id: int | None
    balance_changed: bool = False
    tier_changed: bool = False


@dataclass(slots=True)
class _Promotion:
    name: str
    multiplier: Decimal
    starts_at: dt.datetime
    ends_at: dt.datetime
    for_everyone: bool
    customers: set[int] = field(default_factory=set)


class _Promotions:
    def __init__(self, cursor, *, customer_ids: list[int], first: dt.datetime, last: dt.datetime):
        cursor.execute(_PROMOTIONS_SQL, [last, first])
        self.promotions: dict[int, _Promotion] = {
            pk: _Promotion(name, Decimal(multiplier), starts_at, ends_at, not limited)
            for pk, name, multiplier, starts_at, ends_at, limited in cursor.fetchall()
        }
        limited = [pk for pk, promotion in self.promotions.items() if not promotion.for_everyone]
        if limited:
            cursor.execute(_PROMOTION_CUSTOMERS_SQL, [limited, customer_ids])
            for promotion_id, customer_id in cursor.fetchall():
                self.promotions[promotion_id].customers.add(customer_id)

    def in_force(self, customer_id: int, at: dt.datetime) -> list[tuple[str, Decimal]]:
        # DISTINCT (name, multiplier), as the SQL: the rules take the highest one anyway.
        return sorted(
            {
                (p.name, p.multiplier)
                for p in self.promotions.values()
                if p.starts_at <= at < p.ends_at and (p.for_everyone or customer_id in p.customers)
            }
        )


class _Spend:
    """Qualifying spend (services: the 365 days up to max(purchase time, now)) of each member:
    what was recorded before the batch, read at once for the usual window ending now, plus the
    batch's own purchases so far."""

    def __init__(self, cursor, *, customer_ids: list[int], now: dt.datetime):
        self.cursor = cursor
        self.now = now
        cursor.execute(_SPEND_SQL, [now - SPEND_WINDOW, now, customer_ids])
        self.recorded_now: dict[int, Decimal] = dict(cursor.fetchall())
        self.batch: dict[int, list[tuple[dt.datetime, Decimal]]] = defaultdict(list)

    def add(self, customer_id: int, occurred_at: dt.datetime, amount: Decimal) -> None:
        self.batch[customer_id].append((occurred_at, amount))

    def as_of(self, customer_id: int, as_of: dt.datetime) -> Decimal:
        start = as_of - SPEND_WINDOW
        if as_of == self.now:
            recorded = self.recorded_now.get(customer_id, Decimal("0"))
        else:  # a purchase dated after now (a till's clock ahead): rare, asked for on its own
            self.cursor.execute(_SPEND_SQL, [start, as_of, [customer_id]])
            row = self.cursor.fetchone()
            recorded = row[1] if row else Decimal("0")
        return recorded + sum(
            (amount for at, amount in self.batch[customer_id] if start < at <= as_of), Decimal("0")
        )


# --- Computing and writing ---------------------------------------------------------------


class _Ledger:
    """The rows a batch writes, in the order the service would write them."""

    def __init__(self, *, now: dt.datetime):
        self.now = now
        self.entries: list[list] = []  # account, kind, points, balance_after, at, key, explanation, purchase
        self.lots: list[list] = []  # entry index, account, points, earned_at, expires_at
        self.expiries: dict[dt.datetime, dt.datetime | None] = {}

    def credit(
        self,
        account: _Account,
        *,
        kind: str,
        points: int,
        key: str,
        explanation: list[dict],
        at: dt.datetime,
        purchase: int,
    ) -> None:
        """services._credit: an entry and a lot; while in debt, the debt is repaid first."""
        repaid = min(max(0, -account.balance), points)
        if repaid:
            explanation = [*explanation, {"code": "debt_repaid", "points": repaid}]
        account.balance += points
        account.balance_changed = True
        self.entries.append(
            [account.customer_id, kind, points, account.balance, at, key, explanation, purchase]
        )
        if points - repaid > 0:
            expires_at = self.expiries.get(at, False)
            if expires_at is False:
                expires_at = self.expiries[at] = services._lot_expiry(at)
            self.lots.append([len(self.entries) - 1, account.customer_id, points - repaid, at, expires_at])


_PURCHASE_COLUMNS = (
    "id, integration_id, external_id, customer_id, amount, currency, occurred_at, refunded_amount, "
    "points_earned, points_clawed_back, was_member, request_hash, balance_after, explanation, created_at"
)
_PURCHASE_TYPES = [
    "int8", "int8", "varchar", "int8", "numeric", "varchar", "timestamptz", "numeric",
    "int4", "int4", "bool", "varchar", "int4", "jsonb", "timestamptz",
]  # fmt: skip
_ENTRY_COLUMNS = (
    "id, account_id, kind, points, balance_after, created_at, idempotency_key, explanation, reason, "
    "purchase_id"
)
_ENTRY_TYPES = ["int8", "int8", "varchar", "int4", "int4", "timestamptz", "varchar", "jsonb", "text", "int8"]
_LOT_COLUMNS = "id, entry_id, account_id, points, remaining, earned_at, expires_at"
_LOT_TYPES = ["int8", "int8", "int8", "int4", "int4", "timestamptz", "timestamptz"]
_ACCOUNTS_UPDATE_SQL = """
UPDATE rewards_pointsaccount a
SET balance = x.balance,
    tier_id = x.tier_id,
    updated_at = CASE WHEN x.balance_changed THEN %(now)s ELSE a.updated_at END,
    tier_changed_at = CASE WHEN x.tier_changed THEN %(now)s ELSE a.tier_changed_at END
FROM unnest(%(ids)s::bigint[], %(balances)s::int[], %(tiers)s::bigint[], %(balance_changed)s::bool[],
            %(tier_changed)s::bool[]) AS x (id, balance, tier_id, balance_changed, tier_changed)
WHERE a.customer_id = x.id
"""


def _ids(cursor, table: str, count: int) -> list[int]:
    """`count` new ids of `table`, ascending, as the rows inserted one by one would get."""
    if not count:
        return []
    cursor.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, count]
    )
    return sorted(pk for (pk,) in cursor.fetchall())


def _copy(cursor, table: str, columns: str, types: list[str], rows) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def purchases_award(
    rows: list[_PurchaseRow],
    *,
    customers: dict[str, CustomerFacts | None],
    integration,
    report: ImportReport,
    bad: Callable[[BadRow], None],
    one_by_one: Callable[..., None],
) -> None:
    """Record these purchases (distinct external ids, each made by a member since enrolling, in
    file order) and award their points in one transaction, exactly as `services.purchase_record`
    would one by one (see the module's docstring). A purchase already recorded with the same data
    is unchanged; with other data its row is bad, as is a row of a member without an account."""
    from .importing import BadRow

    if not rows:
        return
    now = timezone.now()
    program = selectors.program_get()
    program_rules = program["rules"]
    thresholds = [(tier.pk, tier.min_qualifying_spend) for tier in program["tiers"]]
    tiers = {tier.pk: tier for tier in program["tiers"]}
    found_bad: list[BadRow] = []
    created = unchanged = points_awarded = 0
    with transaction.atomic(), connection.cursor() as cursor:
        import_transaction(cursor)
        members = {customers[row.customer_ref].id: customers[row.customer_ref] for row in rows}
        referrers = {c.referred_by_id for c in members.values() if c.referred_by_id is not None}
        cursor.execute(_ACCOUNTS_LOCK_SQL, [sorted(members.keys() | referrers)])
        accounts = {pk: _Account(pk, balance, tier_id) for pk, balance, tier_id in cursor.fetchall()}
        cursor.execute(_RECORDED_SQL, [[row.external_id for row in rows], integration.pk])
        recorded = dict(cursor.fetchall())
        todo = []
        for row in rows:
            customer = customers[row.customer_ref]
            if row.external_id in recorded:
                if recorded[row.external_id] == row.fingerprint:
                    unchanged += 1
                else:
                    reason = f"Purchase {row.external_id!r} was already recorded with different data."
                    found_bad.append(BadRow(row.line, reason, tuple(row.fields)))
            elif customer.id not in accounts:
                reason = "This customer is not a member of the loyalty program."
                found_bad.append(BadRow(row.line, reason, tuple(row.fields)))
            else:
                todo.append(row)
        member_ids = sorted({customers[row.customer_ref].id for row in todo})
        referred = [c for c in members.values() if c.referred_by_id is not None]
        cursor.execute(
            _KEYS_SQL,
            [[key for c in referred for key in services.referral_keys(c.id)]],
        )
        keys_taken = {key for (key,) in cursor.fetchall()}
        spend = _Spend(cursor, customer_ids=member_ids, now=now)
        promotions = None
        if todo:
            promotions = _Promotions(
                cursor,
                customer_ids=member_ids,
                first=min(row.occurred_at for row in todo),
                last=max(row.occurred_at for row in todo),
            )
        purchase_ids = _ids(cursor, "rewards_purchase", len(todo))
        ledger = _Ledger(now=now)
        purchases = []
        lines = []
        as_customer: dict[int, Customer] = {}
        for row, purchase_id in zip(todo, purchase_ids, strict=True):
            facts = customers[row.customer_ref]
            account = accounts[facts.id]
            customer = as_customer.get(facts.id)
            if customer is None:
                # As loaded from the database with only these two fields: building a Customer
                # computes every field's default, a new random referral code among them.
                customer = as_customer[facts.id] = Customer.from_db(
                    connection.alias, ["id", "enrolled_at"], [facts.id, facts.enrolled_at]
                )
            earn = rules.purchase_points(
                amount=row.amount,
                lines=[rules.Line(row.category, row.amount)] if row.category else [],
                ctx=selectors.earn_context_get(
                    customer=customer,
                    tier=tiers.get(account.tier_id) if account.tier_id is not None else None,
                    at=row.occurred_at,
                    promotions=promotions.in_force(facts.id, row.occurred_at),
                ),
            )
            earned_at = min(row.occurred_at, now)
            if earn.points > 0:
                ledger.credit(
                    account,
                    kind=Kind.EARN,
                    points=earn.points,
                    key=f"purchase:{purchase_id}:earn",
                    explanation=earn.explanation,
                    at=earned_at,
                    purchase=purchase_id,
                )
            # The tier upgrade on the purchase that crosses a threshold (services._tier_upgrade_check).
            as_of = max(row.occurred_at, now)
            spend.add(facts.id, row.occurred_at, row.amount)
            best_id = rules.tier_for_spend(spend.as_of(facts.id, as_of), thresholds) if thresholds else None
            if best_id is not None:
                current = (
                    tiers[account.tier_id].min_qualifying_spend if account.tier_id in tiers else Decimal("-1")
                )
                if tiers[best_id].min_qualifying_spend > current:
                    account.tier_id = best_id
                    account.tier_changed = True
            # The referral bonuses after a referred member's first purchase (services._referral_bonus_check).
            key_referee, key_referrer = services.referral_keys(facts.id)
            if facts.referred_by_id is not None and key_referee not in keys_taken:
                at = min(row.occurred_at, now)
                if program_rules.referral_bonus_referee:
                    ledger.credit(
                        account,
                        kind=Kind.BONUS,
                        points=program_rules.referral_bonus_referee,
                        key=key_referee,
                        explanation=[{"code": "referral_referee"}],
                        at=at,
                        purchase=purchase_id,
                    )
                    keys_taken.add(key_referee)
                referrer = accounts.get(facts.referred_by_id)
                if (
                    referrer is not None
                    and program_rules.referral_bonus_referrer
                    and key_referrer not in keys_taken
                ):
                    ledger.credit(
                        referrer,
                        kind=Kind.BONUS,
                        points=program_rules.referral_bonus_referrer,
                        key=key_referrer,
                        explanation=services.referral_referrer_explanation(
                            first_name=facts.first_name, external_ref=facts.external_ref
                        ),
                        at=at,
                        purchase=purchase_id,
                    )
                    keys_taken.add(key_referrer)
            purchases.append(
                (
                    purchase_id,
                    integration.pk,
                    row.external_id,
                    facts.id,
                    row.amount,
                    row.currency,
                    row.occurred_at,
                    Decimal("0"),
                    earn.points,
                    0,
                    True,
                    row.fingerprint,
                    account.balance,
                    Jsonb(earn.explanation),
                    now,
                )
            )
            if row.category:
                lines.append((purchase_id, row.category, row.amount))
            created += 1
            points_awarded += earn.points
        entry_ids = _ids(cursor, "rewards_ledgerentry", len(ledger.entries))
        lot_ids = _ids(cursor, "rewards_pointslot", len(ledger.lots))
        try:
            with transaction.atomic():
                _copy(cursor, "rewards_purchase", _PURCHASE_COLUMNS, _PURCHASE_TYPES, purchases)
                _copy(
                    cursor,
                    "rewards_purchaseline",
                    "purchase_id, sku, category, quantity, amount",
                    ["int8", "varchar", "varchar", "numeric", "numeric"],
                    ((pk, "", category, Decimal("1"), amount) for pk, category, amount in lines),
                )
                _copy(
                    cursor,
                    "rewards_ledgerentry",
                    _ENTRY_COLUMNS,
                    _ENTRY_TYPES,
                    (
                        (pk, account, kind, points, after, at, key, Jsonb(explanation), "", purchase)
                        for pk, (account, kind, points, after, at, key, explanation, purchase) in zip(
                            entry_ids, ledger.entries, strict=True
                        )
                    ),
                )
                _copy(
                    cursor,
                    "rewards_pointslot",
                    _LOT_COLUMNS,
                    _LOT_TYPES,
                    (
                        (pk, entry_ids[entry], account, points, points, earned_at, expires_at)
                        for pk, (entry, account, points, earned_at, expires_at) in zip(
                            lot_ids, ledger.lots, strict=True
                        )
                    ),
                )
                # Every account of the batch gets a new row version, changed or not: a member's
                # purchase read before this import committed reads again (its qualifying spend
                # moved; services._purchase_record_unlocked).
                touched = list(accounts.values())
                if touched:
                    cursor.execute(
                        _ACCOUNTS_UPDATE_SQL,
                        {
                            "now": now,
                            "ids": [a.customer_id for a in touched],
                            "balances": [a.balance for a in touched],
                            "tiers": [a.tier_id for a in touched],
                            "balance_changed": [a.balance_changed for a in touched],
                            "tier_changed": [a.tier_changed for a in touched],
                        },
                    )
                # Deferred foreign keys are checked here, inside the savepoint, not at the commit.
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        except IntegrityError:
            # Something changed under the batch that the locks do not cover (an id of this file
            # recorded by another import for another member): the service sorts it out, row by row.
            one_by_one(rows, integration=integration, report=report, bad=bad)
            return
    report.created += created
    report.unchanged += unchanged
    report.points_awarded += points_awarded
    for row in found_bad:
        bad(row)
