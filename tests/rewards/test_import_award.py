"""import_purchases --award-points on PostgreSQL awards a batch at a time (rewards/importing_award.py):
the ledger it writes is the one recording the same rows one by one through purchase_record writes."""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from accounts.models import Customer
from rewards import importing, services
from rewards.ledger_check import ledger_violations
from rewards.models import LedgerEntry, PointsAccount, PointsLot, Promotion, Purchase
from tests.factories import (
    CategoryMultiplierFactory,
    CustomerFactory,
    StaffFactory,
    program_rules_set,
    standard_tiers,
)

HEADER = "customer,occurred_at,amount,external_id,currency,category\n"
ROLES = ["debt", "climber", "referrer", "referred", "vip", "late", "shopper", "noaccount", "plain"]


def ago(days: float, base: dt.datetime | None = None) -> dt.datetime:
    return ((base or timezone.now()) - dt.timedelta(days=days)).replace(microsecond=0)


@pytest.fixture
def rich_program(db):
    program_rules_set(
        points_per_unit=1,
        minimum_spend=5,
        expiry_months=24,
        signup_bonus=50,
        referral_bonus_referrer=100,
        referral_bonus_referee=40,
    )
    CategoryMultiplierFactory(category="beans", multiplier=Decimal("2"))
    CategoryMultiplierFactory(category="gear", multiplier=Decimal("0.5"))
    Promotion.objects.create(name="Double", multiplier=Decimal("2"), starts_at=ago(62), ends_at=ago(55))
    return standard_tiers()


def members_make(prefix: str, base: dt.datetime) -> dict[str, Customer]:
    """The same cast under two prefixes: one imported in batches, one one by one. Dated from the
    same `base`, so that the two casts cannot straddle a second."""
    people = {}
    for role in ROLES:
        people[role] = CustomerFactory(external_ref=f"{prefix}-{role}", first_name=role.title())
    for role in ("debt", "climber", "referrer", "vip", "plain"):
        services.customer_enroll(customer=people[role], at=ago(400, base))
    services.customer_enroll(
        customer=people["referred"], at=ago(300, base), referral_code=people["referrer"].referral_code
    )
    services.customer_enroll(customer=people["late"], at=ago(20, base))
    # Enrolled, but without a points account (an inconsistent import of customers): refused.
    Customer.objects.filter(pk=people["noaccount"].pk).update(enrolled_at=ago(500, base))
    services.points_adjust(
        customer=people["debt"], points=-130, reason="refund of spent points", staff_user=StaffFactory()
    )
    vip = Promotion.objects.create(
        name="VIP", multiplier=Decimal("3"), starts_at=ago(45, base), ends_at=ago(40, base)
    )
    vip.customers.add(people["vip"])
    return people


def rows_for(prefix: str, base: dt.datetime) -> str:
    """In time order: debt repaid, a climb through Silver inside the file, a referral, promotions,
    categories, purchases before enrolment and by shoppers, repeats and a conflicting id."""
    p = prefix
    rows = [
        (f"{p}-late", ago(30, base), "300.00", f"{p}-1", "beans"),  # before enrolling: nothing
        (f"{p}-debt", ago(90, base), "60.00", f"{p}-2", ""),  # repays 60 of 80 debt
        (f"{p}-climber", ago(80, base), "900.00", f"{p}-3", "gear"),
        (f"{p}-referred", ago(75, base), "120.50", f"{p}-4", "beans"),  # first purchase: both bonuses
        (f"{p}-referrer", ago(70, base), "33.00", f"{p}-5", ""),
        (f"{p}-climber", ago(65, base), "800.00", "", ""),
        (f"{p}-shopper", ago(64, base), "55.00", f"{p}-6", "beans"),
        (f"{p}-debt", ago(60, base), "75.00", f"{p}-7", "beans"),  # repays the rest, in the promotion
        (f"{p}-climber", ago(58, base), "650.00", f"{p}-8", "beans"),  # crosses Silver (2000)
        (f"{p}-climber", ago(50, base), "100.00", f"{p}-9", ""),  # earns ×1.25
        (f"{p}-referred", ago(48, base), "20.00", f"{p}-10", ""),  # no second bonus
        (f"{p}-vip", ago(42, base), "70.00", f"{p}-11", "gear"),  # only-for-some promotion
        (f"{p}-plain", ago(42, base), "70.00", f"{p}-12", "gear"),  # not in it
        (f"{p}-new", ago(41, base), "12.00", f"{p}-13", ""),  # unknown: a new shopper
        (f"{p}-noaccount", ago(40, base), "40.00", f"{p}-14", ""),  # bad: not a member
        (f"{p}-plain", ago(35, base), "4.99", f"{p}-15", ""),  # below the minimum spend
        (f"{p}-climber", ago(30, base), "3000.00", f"{p}-16", ""),  # crosses Gold
        (f"{p}-climber", ago(29, base), "10.00", f"{p}-17", "beans"),
        (f"{p}-late", ago(10, base), "99.99", f"{p}-18", "beans"),  # since enrolling: earns
        (f"{p}-late", ago(10, base), "99.99", f"{p}-18", "beans"),  # the same row again: unchanged
        (f"{p}-late", ago(9, base), "15.00", f"{p}-18", ""),  # the same id, other data: bad
        (f"{p}-referrer", ago(5, base), "250.00", f"{p}-19", "beans"),
        (f"{p}-plain", ago(2, base), "44.00", "", "beans"),
    ]
    return HEADER + "".join(
        f"{ref},{at.isoformat()},{amount},{external_id},,{category}\n"
        for ref, at, amount, external_id, category in rows
    )


def ledger_of(people: dict[str, Customer], prefix: str) -> dict:
    """Everything the import wrote or changed for a cast, with ids and prefixes taken out."""
    ids = {customer.pk: role for role, customer in people.items()}

    def purchase_name(purchase_id):
        if purchase_id is None:
            return None
        purchase = Purchase.objects.get(pk=purchase_id)
        external_id = purchase.external_id.replace(prefix, "P")
        if external_id.startswith("row-"):
            external_id = f"row:{purchase.occurred_at.isoformat()}"
        return external_id

    def key_name(entry):
        key = entry.idempotency_key
        if key.startswith("purchase:"):
            return f"purchase:{purchase_name(entry.purchase_id)}:earn"
        if key.startswith("adjust:"):
            return "adjust"
        kind, pk, *rest = key.split(":")
        return ":".join([kind, ids[int(pk)], *rest])

    def explanation(lines):
        return [
            {k: (v.replace(prefix, "P") if isinstance(v, str) else v) for k, v in line.items()}
            for line in lines
        ]

    result = {}
    for role, customer in people.items():
        account = PointsAccount.objects.filter(pk=customer.pk).first()
        entries = [
            (e.kind, e.points, e.balance_after, None if e.kind == "adjust" else e.created_at, key_name(e),
             explanation(e.explanation), purchase_name(e.purchase_id))
            for e in LedgerEntry.objects.filter(account_id=customer.pk).order_by("id")
        ]  # fmt: skip
        lots = [
            (lot.points, lot.remaining, lot.earned_at, lot.expires_at, key_name(lot.entry))
            for lot in PointsLot.objects.filter(account_id=customer.pk).select_related("entry").order_by("id")
        ]
        purchases = [
            (purchase_name(p.pk), p.amount, p.occurred_at, p.points_earned, p.was_member, p.balance_after,
             explanation(p.explanation), [(line.category, line.amount) for line in p.lines.all()])
            for p in Purchase.objects.filter(customer=customer).order_by("occurred_at", "id")
        ]  # fmt: skip
        result[role] = {
            "balance": account.balance if account else None,
            "tier": account.tier.code if account and account.tier else None,
            "tier_changed": bool(account and account.tier_changed_at and account.tier_changed_at > ago(1)),
            "entries": entries,
            "lots": lots,
            "purchases": purchases,
        }
    result["new"] = [
        (c.enrolled_at, c.purchases.count()) for c in Customer.objects.filter(external_ref=f"{prefix}-new")
    ]
    return result


def import_file(tmp_path, prefix, *, one_by_one: bool, monkeypatch, chunk_size: int, base: dt.datetime):
    path = tmp_path / f"{prefix}.csv"
    if not path.exists():  # the same file again for a re-run (its dates are relative to now)
        path.write_text(rows_for(prefix, base))
    bad = []
    with monkeypatch.context() as patch:
        if one_by_one:
            patch.setattr(importing, "_set_based", lambda: False)
        report = importing.purchases_import(
            path=path, award_points=True, chunk_size=chunk_size, on_bad_row=bad.append
        )
    return report, [(row.line, row.reason.replace(prefix, "P")) for row in bad]


def summary(report):
    return (report.rows, report.created, report.unchanged, report.bad, report.customers_created,
            report.points_awarded)  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(("chunk_size", "award_batch"), [(5_000, 1_000), (4, 3), (7, 1)])
def test_award_in_batches_writes_the_ledger_recording_one_by_one_writes(
    tmp_path, monkeypatch, rich_program, chunk_size, award_batch
):
    monkeypatch.setattr(importing, "AWARD_BATCH", award_batch)
    base = timezone.now()  # both casts and both files hold the same moments
    batch_people, single_people = members_make("A", base), members_make("B", base)

    batch, batch_bad = import_file(
        tmp_path, "A", one_by_one=False, monkeypatch=monkeypatch, chunk_size=chunk_size, base=base
    )
    single, single_bad = import_file(
        tmp_path, "B", one_by_one=True, monkeypatch=monkeypatch, chunk_size=chunk_size, base=base
    )

    assert summary(batch) == summary(single)
    assert batch_bad == single_bad
    assert sorted(line for line, _reason in batch_bad) == [16, 22]
    assert (16, "This customer is not a member of the loyalty program.") in batch_bad
    batch_ledger, single_ledger = ledger_of(batch_people, "A"), ledger_of(single_people, "B")
    for role in [*ROLES, "new"]:
        for key in batch_ledger[role] if role != "new" else []:
            assert batch_ledger[role][key] == single_ledger[role][key], (role, key)
        assert batch_ledger[role] == single_ledger[role], role
    # What the cast is there to show, so that a broken fixture cannot make the comparison empty.
    assert batch_ledger["climber"]["tier"] == "gold" and batch_ledger["climber"]["tier_changed"]
    assert batch_ledger["debt"]["balance"] > 0 and any(
        line["code"] == "debt_repaid" for entry in batch_ledger["debt"]["entries"] for line in entry[5]
    )
    assert [e[4] for e in batch_ledger["referrer"]["entries"]].count("referral:referred:referrer") == 1
    assert any(line.get("name") == "VIP" for p in batch_ledger["vip"]["purchases"] for line in p[6])
    assert batch_ledger["late"]["purchases"][0][3:5] == (0, False)
    assert batch_ledger["new"] == [(None, 1)]
    assert ledger_violations() == []

    # The same file again changes nothing.
    again, again_bad = import_file(
        tmp_path, "A", one_by_one=False, monkeypatch=monkeypatch, chunk_size=chunk_size, base=base
    )
    assert (again.created, again.unchanged, again.points_awarded) == (0, batch.created + batch.unchanged, 0)
    assert sorted(line for line, _reason in again_bad) == [16, 22]
    assert ledger_of(batch_people, "A") == batch_ledger


@pytest.mark.django_db
def test_award_batch_queries_do_not_grow_with_rows(tmp_path, rich_program, django_assert_max_num_queries):
    people = members_make("A", timezone.now())
    rows = "".join(
        f"{'A-plain' if i % 2 else 'A-climber'},{ago(200 - i / 10).isoformat()},{i}.25,id{i},,"
        f"{'beans' if i % 3 else ''}\n"
        for i in range(400)
    )
    path = tmp_path / "many.csv"
    path.write_text(HEADER + rows)
    services.integration_for_import()

    with django_assert_max_num_queries(30):
        report = importing.purchases_import(path=path, award_points=True)

    assert report.created == 400 and report.points_awarded > 0
    assert PointsAccount.objects.get(pk=people["climber"].pk).tier.code == "gold"
    assert ledger_violations() == []


@pytest.mark.django_db(transaction=True)
def test_an_award_import_beside_the_api_recording_purchases_of_the_same_members_keeps_the_ledger_right(
    tmp_path,
):
    """Real concurrent connections: the import locks the members' accounts as the service does."""
    program_rules_set(points_per_unit=1, minimum_spend=0, expiry_months=24, signup_bonus=0)
    members = []
    for i in range(6):
        customer, _ = services.customer_enroll(customer=CustomerFactory(external_ref=f"M{i}"), at=ago(100))
        members.append(customer)
    pos = services.integration_token_create(name="pos")[0]
    rows = "".join(
        f"M{i % 6},{ago(50 - i / 100).isoformat()},{10 + i % 7}.50,imp{i},,\n" for i in range(3_000)
    )
    path = tmp_path / "history.csv"
    path.write_text(HEADER + rows)
    expected_import = sum(10 + i % 7 for i in range(3_000))
    errors = []

    def api():
        try:
            for n in range(150):
                services.purchase_record(
                    integration=pos,
                    external_id=f"api{n}",
                    customer_ref=f"M{n % 6}",
                    amount=Decimal("20.00"),
                    currency="DKK",
                    occurred_at=timezone.now(),
                )
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=api)
    thread.start()
    report = importing.purchases_import(path=path, award_points=True, chunk_size=500)
    thread.join()
    close_old_connections()

    assert errors == []
    assert (report.created, report.bad, report.points_awarded) == (3_000, 0, expected_import)
    assert sum(
        PointsAccount.objects.filter(pk__in=[m.pk for m in members]).values_list("balance", flat=True)
    ) == (expected_import + 150 * 20)
    assert LedgerEntry.objects.count() == 3_000 + 150
    assert ledger_violations() == []
