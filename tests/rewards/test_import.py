"""History imports (import_customers, import_purchases) on PostgreSQL: idempotent, streaming,
one bad row never stops a run."""

import csv
import datetime as dt
import io
import threading
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import Customer
from rewards import importing, services
from rewards.models import LedgerEntry, PointsAccount, Purchase, PurchaseLine
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

HEADER = "customer,occurred_at,amount,external_id,currency,category\n"


def write(tmp_path, text: str, *, name: str = "file.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def run(command: str, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a management command."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(command, *[str(arg) for arg in args], stdout=out, stderr=err)
    except SystemExit as exc:
        return exc.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def day(days_ago: int) -> str:
    return (timezone.localdate() - dt.timedelta(days=days_ago)).isoformat()


def imported():
    return Purchase.objects.filter(integration=services.integration_for_import())


# --- Purchases --------------------------------------------------------------------------


def test_import_purchases_records_history_without_points(tmp_path):
    member = CustomerFactory(external_ref="M1", enrolled_at=timezone.now() - dt.timedelta(days=100))
    path = write(
        tmp_path,
        HEADER
        + f"M1,{day(10)},120.50,p1,DKK,coffee\n"
        + f"NEW1,{day(5)}T14:30:00,80,p2,,\n"
        + f"NEW1,{day(4)}T09:00:00+00:00,19.9,p3,dkk,food\n",
    )

    code, out, err = run("import_purchases", path)

    assert (code, err) == (0, "")
    assert "3 purchases recorded" in out and "rows/s" in out
    purchases = {p.external_id: p for p in imported()}
    assert set(purchases) == {"p1", "p2", "p3"}
    p1, p2 = purchases["p1"], purchases["p2"]
    assert (p1.customer_id, p1.amount, p1.currency, p1.was_member) == (
        member.pk,
        Decimal("120.50"),
        "DKK",
        True,
    )
    assert p1.points_earned == 0 and p1.balance_after is None
    tz = ZoneInfo(settings.TIME_ZONE)
    assert p2.occurred_at == dt.datetime.fromisoformat(f"{day(5)}T14:30:00").replace(tzinfo=tz)
    assert p2.customer.external_ref == "NEW1" and not p2.customer.is_member and not p2.was_member
    assert [(line.category, line.amount) for line in PurchaseLine.objects.filter(purchase=p1)] == [
        ("coffee", Decimal("120.50"))
    ]
    assert not PurchaseLine.objects.filter(purchase=p2).exists()
    assert purchases["p3"].amount == Decimal("19.90")
    assert not LedgerEntry.objects.exists()
    assert not PointsAccount.objects.filter(customer__external_ref="NEW1").exists()


def test_import_purchases_again_adds_nothing(tmp_path):
    path = write(tmp_path, HEADER + f"A,{day(3)},10,p1,,coffee\nB,{day(2)},20,,,\n")
    run("import_purchases", path)
    before = (Purchase.objects.count(), PurchaseLine.objects.count(), Customer.objects.count())

    code, out, _err = run("import_purchases", path)

    assert code == 0 and "0 purchases recorded, 2 already there" in out
    assert (
        (Purchase.objects.count(), PurchaseLine.objects.count(), Customer.objects.count())
        == before
        == (2, 1, 2)
    )


def test_rows_without_external_id_get_a_stable_id_from_their_content(tmp_path):
    # The same purchase written twice, the second time with the date spelled as a datetime.
    path = write(
        tmp_path,
        "customer,occurred_at,amount\n"
        + f"A,{day(3)},10.00\n"
        + f"A,{day(3)}T00:00:00,10\n"
        + f"A,{day(3)},11\n",
    )

    code, out, _err = run("import_purchases", path)
    code_again, out_again, _err = run("import_purchases", path)

    assert code == code_again == 0
    assert "2 purchases recorded, 1 already there" in out
    assert "0 purchases recorded, 3 already there" in out_again
    assert imported().count() == 2
    assert all(p.external_id.startswith("row-") and len(p.external_id) == 68 for p in imported())


def test_rows_without_external_id_dedupe_across_chunks(tmp_path):
    rows = "".join(f"C{i % 3},{day(i % 5 + 1)},{i % 4}.50\n" for i in range(20))
    path = write(tmp_path, "customer,occurred_at,amount\n" + rows + rows)

    code, out, _err = run("import_purchases", path, "--chunk-size", 3)

    distinct = len({(i % 3, i % 5, i % 4) for i in range(20)})
    assert code == 0 and f"{distinct} purchases recorded, {40 - distinct} already there" in out
    assert imported().count() == distinct


def test_bad_rows_are_reported_by_line_number_while_good_rows_go_in(tmp_path):
    future = (timezone.localdate() + dt.timedelta(days=3)).isoformat()
    lines = [
        f"A,{day(1)},10,good1,,",  # line 2
        f"A,{day(1)},abc,b1,,",  # 3
        f"A,{day(1)},-5,b2,,",  # 4
        f"A,{day(1)},NaN,b3,,",  # 5
        f"A,{day(1)},1.005,b4,,",  # 6
        f"A,{day(1)},10000000000,b5,,",  # 7
        "A,yesterday,10,b6,,",  # 8
        f"A,{future},10,b7,,",  # 9
        f"A,{day(1)},10,b8,EUR,",  # 10
        f",{day(1)},10,b9,,",  # 11
        f"A,{day(1)},10",  # 12
        f"A,{day(1)},9999999999.99,good2,,",  # 13
        f"A,{day(1)},1e2,good3,,",  # 14
    ]
    path = write(tmp_path, HEADER + "\n".join(lines) + "\n")
    errors = tmp_path / "errors.csv"

    code, out, err = run("import_purchases", path, "--errors", errors)

    assert code == 1
    assert "3 purchases recorded" in out and "10 bad" in out
    assert set(imported().values_list("external_id", flat=True)) == {"good1", "good2", "good3"}
    expected = {
        3: "amount is not a number",
        4: "amount is negative",
        5: "amount is not a number",
        6: "more than 2 decimals",
        7: "amount is too large",
        8: "occurred_at is not a date",
        9: "more than a day in the future",
        10: "not the program currency",
        11: "customer reference is missing",
        12: "expected 6 fields, found 3",
    }
    reported = err.strip().splitlines()
    assert len(reported) == 10
    for (line, reason), message in zip(expected.items(), reported, strict=True):
        assert message.startswith(f"line {line}: ") and reason in message
    with errors.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["line", "reason", "row"]
    assert [int(row[0]) for row in rows[1:]] == list(expected)
    assert rows[1][2] == f"A,{day(1)},abc,b1,,"


def test_a_missing_required_column_is_a_command_error_naming_it(tmp_path):
    path = write(tmp_path, "Customer,amount,category\nA,10,coffee\n")

    with pytest.raises(CommandError) as error:
        call_command("import_purchases", str(path), stdout=io.StringIO(), stderr=io.StringIO())

    assert "Missing required column(s): occurred_at." in str(error.value)
    assert not Purchase.objects.exists() and not Customer.objects.exists()


def test_award_points_gives_members_points_for_purchases_since_enrolment_and_non_members_none(
    tmp_path, program
):
    member = CustomerFactory(external_ref="M1")
    services.customer_enroll(customer=member, at=timezone.now() - dt.timedelta(days=20))
    path = write(
        tmp_path,
        HEADER
        + f"M1,{day(10)},120.50,p1,,\n"  # member: 120 points
        + f"M1,{day(30)},500,p2,,\n"  # before enrolling: history, no points
        + f"N1,{day(10)},300,p3,,\n",  # not a member: no points
    )

    code, out, _err = run("import_purchases", path, "--award-points")
    again, out_again, _err = run("import_purchases", path, "--award-points")

    assert code == again == 0
    assert "3 purchases recorded" in out and "120 points awarded" in out
    assert "0 purchases recorded, 3 already there" in out_again
    purchases = {p.external_id: p for p in imported()}
    assert purchases["p1"].points_earned == 120 and purchases["p1"].was_member
    assert purchases["p2"].points_earned == 0 and not purchases["p2"].was_member
    assert purchases["p3"].points_earned == 0 and not purchases["p3"].customer.is_member
    assert PointsAccount.objects.get(pk=member.pk).balance == 50 + 120
    assert not PointsAccount.objects.filter(customer__external_ref="N1").exists()


def test_history_imported_then_awarded_is_a_replay_not_a_conflict(tmp_path, program):
    member = CustomerFactory(external_ref="M1")
    services.customer_enroll(customer=member, at=timezone.now() - dt.timedelta(days=20))
    path = write(tmp_path, HEADER + f"M1,{day(5)}T12:00:00,42.10,p1,,coffee\nM1,{day(4)},10,,,\n")
    run("import_purchases", path)

    code, out, err = run("import_purchases", path, "--award-points")

    assert (code, err) == (0, "")
    assert "2 already there" in out and "0 points awarded" in out
    assert PointsAccount.objects.get(pk=member.pk).balance == 50


def test_the_same_id_with_other_data_is_a_bad_row(tmp_path):
    run("import_purchases", write(tmp_path, HEADER + f"A,{day(2)},10,p1,,\n"))

    code, out, err = run(
        "import_purchases",
        write(tmp_path, HEADER + f"A,{day(2)},10,p1,,\nA,{day(2)},12,p1,,\n", name="b.csv"),
    )

    assert code == 1 and "1 already there, 1 bad" in out
    assert err.strip() == "line 3: purchase 'p1' was already recorded with different data"
    assert imported().get().amount == Decimal("10.00")


@pytest.mark.parametrize(
    ("ref", "category"),
    [("C000001", "coffee"), ('Søren "the" Ærø', 'tea, "green"'), ("A", ""), ("ยืนยัน", "ชา")],
)
def test_purchase_fingerprint_is_the_request_hash_purchase_record_computes(ref, category):
    occurred_at = dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.UTC)
    amount = Decimal("1234.50")
    lines = [{"category": category, "amount": str(amount)}] if category else []
    service_payload = {
        "customer": ref,
        "amount": str(amount),
        "currency": "DKK",
        "occurred_at": occurred_at.isoformat(),
        "lines": [{k: str(v) for k, v in sorted(line.items()) if v not in (None, "")} for line in lines],
        "enroll": False,
    }
    assert importing.purchase_fingerprint(
        customer_ref=ref, amount=amount, currency="DKK", occurred_at=occurred_at, category=category
    ) == services.request_hash(service_payload)


def test_history_import_queries_do_not_grow_with_rows(tmp_path, django_assert_max_num_queries):
    CustomerFactory(external_ref="K")
    rows = "".join(
        f"{'K' if i % 2 else f'N{i}'},{day(1)},{i}.25,id{i},,{'food' if i % 3 else ''}\n" for i in range(500)
    )
    path = write(tmp_path, HEADER + rows)
    services.integration_for_import()

    with django_assert_max_num_queries(10):
        report = importing.purchases_import(path=path)

    assert (report.created, report.customers_created) == (500, 250)


@pytest.mark.parametrize(
    "zone", ["Europe/Copenhagen", "Australia/Lord_Howe", "Pacific/Apia", "Africa/Casablanca"]
)
def test_local_times_become_utc_as_through_the_zone(zone):
    # Lord Howe moves by half an hour, Apia skipped a whole day, Casablanca changes twice a year more.
    tz = ZoneInfo(zone)
    offsets = importing._UtcOffsets(tz)
    local = dt.datetime(2010, 1, 1)
    while local < dt.datetime(2013, 1, 1):
        for minute in (0, 15, 29, 30, 59):
            moment = local.replace(minute=minute)
            assert offsets.to_utc(moment) == moment.replace(tzinfo=tz).astimezone(dt.UTC), moment
        local += dt.timedelta(hours=1)
    for edge in (dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59)):
        try:
            expected = edge.replace(tzinfo=tz).astimezone(dt.UTC)
        except OverflowError:
            with pytest.raises(OverflowError):
                offsets.to_utc(edge)
        else:
            assert offsets.to_utc(edge) == expected


@pytest.mark.parametrize(
    "zone", ["Europe/Copenhagen", "America/New_York", "Asia/Kolkata", "Pacific/Apia", "Australia/Lord_Howe"]
)
def test_purchase_moments_are_those_of_the_zone_and_their_iso_text(zone):
    # The shortcut for dates and for times to the second on days of a whole-hour offset gives what
    # converting through the zone gives, the same errors included; Kolkata is half an hour off.
    tz = ZoneInfo(zone)
    latest = dt.datetime(2012, 6, 1, tzinfo=dt.UTC)
    moments = importing._PurchaseMoments(tz, latest=latest)

    def through_the_zone(text: str):
        try:
            moment = importing._moment_parse(text, what="occurred_at", tz=tz, latest=latest)
        except importing._BadValue as exc:
            return str(exc)
        return moment, moment.isoformat()

    def shortcut(text: str):
        try:
            return moments(text)
        except importing._BadValue as exc:
            return str(exc)

    texts = []
    local = dt.datetime(2010, 1, 1)
    while local < dt.datetime(2013, 1, 1):  # every hour of the day, over the weeks
        for minute, second in ((0, 0), (29, 59), (30, 0), (59, 1)):
            moment = local.replace(minute=minute, second=second)
            texts += [moment.isoformat(), moment.isoformat(sep=" ")]
        texts += [local.date().isoformat(), local.isoformat(timespec="minutes")]
        local += dt.timedelta(hours=7)
    texts += [
        "2011-03-27T02:61:00",
        "2011-03-27T02:30:60",
        "2011-03-27T24:00:00",
        " 2011-03-27T02:30",
        "2011-03-27 02:30:0 ",
        "2011-3-27T02:30:00Z",
        "2011-03-27T02:30:00Z",
        "2011-03-27X02:30:00",
        "2011-03-27T2:30:000",
        "1999-12-31T23:59:59",
        "1999-12-31",
        "2012-06-02",
        "٢٠١١-03-27T02:30:00",
    ]
    for text in texts * 2:  # the second time from what was remembered
        assert shortcut(text) == through_the_zone(text), text


# --- Files that are not what they should be ---------------------------------------------


def test_a_latin1_file_imports_with_encoding_latin1(tmp_path):
    path = write(tmp_path, HEADER + f"Søren,{day(1)},10,p1,,kaffe-ø\n", encoding="latin-1")

    code, _out, err = run("import_purchases", path, "--encoding", "latin-1")

    assert (code, err) == (0, "")
    purchase = imported().get()
    assert purchase.customer.external_ref == "Søren" and purchase.lines.get().category == "kaffe-ø"


def test_a_wrongly_decoded_file_gives_errors_per_line_not_a_crash(tmp_path):
    path = write(
        tmp_path,
        HEADER + f"Søren,{day(1)},10,p1,,\nAnn,{day(1)},11,p2,,\nBjørn,{day(1)},12,p3,,\n",
        encoding="latin-1",
    )

    code, out, err = run("import_purchases", path)

    assert code == 1 and "1 purchases recorded" in out and "2 bad" in out
    assert err.strip().splitlines() == [
        "line 2: not valid utf-8 text (try --encoding)",
        "line 4: not valid utf-8 text (try --encoding)",
    ]
    assert list(imported().values_list("external_id", flat=True)) == ["p2"]


def test_an_unknown_encoding_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match="Unknown encoding"):
        call_command(
            "import_purchases", str(write(tmp_path, HEADER)), "--encoding", "klingon", stdout=io.StringIO()
        )


def test_a_line_over_the_size_limit_is_reported_and_the_next_lines_go_in(tmp_path):
    huge = "x" * (importing.MAX_LINE_LENGTH + 10)
    path = write(tmp_path, HEADER + f"A,{day(1)},10,p1,,\nA,{day(1)},10,p2,,{huge}\nA,{day(1)},10,p3,,\n")

    code, _out, err = run("import_purchases", path)

    assert code == 1
    assert err.strip() == f"line 3: line longer than {importing.MAX_LINE_LENGTH:,} characters"
    assert set(imported().values_list("external_id", flat=True)) == {"p1", "p3"}


def test_a_quoted_field_over_the_size_limit_is_reported(tmp_path):
    # Spread over short lines, it passes the line limit and meets the csv module's field limit.
    x = "x" * 25
    path = write(tmp_path, HEADER + f'A,"{x}\n{x}\n{x}",10,p1,,\nA,{day(1)},10,p2,,\n')

    report = importing.purchases_import(path=path, max_line_length=60, on_bad_row=(bad := []).append)

    # The lines the long field ran over are read again on their own: there might be good rows
    # among them (tests/rewards/test_import_bad_input.py: an unclosed quote).
    assert report.created == 1 and [(row.line, row.reason) for row in bad] == [
        (2, "unreadable CSV: field larger than field limit (60); lines 3–4 read again as rows of their own"),
        (3, "expected 6 fields, found 1"),
        (4, "expected 6 fields, found 5"),
    ]


def test_an_empty_file_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match="empty"):
        call_command("import_purchases", str(write(tmp_path, "")), stdout=io.StringIO())


def test_a_utf8_byte_order_mark_is_ignored(tmp_path):
    code, _out, _err = run("import_purchases", write(tmp_path, "\ufeff" + HEADER + f"A,{day(1)},10,p1,,\n"))
    assert code == 0 and imported().count() == 1


# --- Customers ------------------------------------------------------------------------


CUSTOMERS = (
    "external_ref,email,name,birthday,enrolled_at,language,marketing_consent\n"
    "C1,ann@example.com,Ann Marie Berg,1990-02-03,2023-05-01,da,yes\n"
    "C2,,Bo,,,,\n"
)


def test_import_customers_makes_members_without_signup_bonus_and_is_idempotent(tmp_path, program):
    path = write(tmp_path, CUSTOMERS)

    code, out, err = run("import_customers", path)
    code_again, out_again, _err = run("import_customers", path)

    assert (code, err) == (0, "")
    assert "2 customers created" in out and "1 enrolled as members" in out
    assert code_again == 0 and "0 customers created, 0 updated, 2 unchanged" in out_again
    assert "0 enrolled as members" in out_again
    ann = Customer.objects.get(external_ref="C1")
    assert (ann.email, ann.first_name, ann.last_name, ann.language) == (
        "ann@example.com",
        "Ann",
        "Marie Berg",
        "da",
    )
    assert ann.birthday == dt.date(1990, 2, 3) and ann.marketing_consent and ann.marketing_consent_changed_at
    assert ann.enrolled_at == dt.datetime(2023, 5, 1, tzinfo=ZoneInfo(settings.TIME_ZONE))
    account = PointsAccount.objects.get(pk=ann.pk)
    assert (account.balance, account.tier.code, account.tier_changed_at) == (0, "bronze", ann.enrolled_at)
    assert not LedgerEntry.objects.exists()
    bo = Customer.objects.get(external_ref="C2")
    assert (bo.first_name, bo.last_name, bo.is_member) == ("Bo", "", False)
    assert Customer.objects.count() == 2 and PointsAccount.objects.count() == 1


def test_import_customers_updates_only_what_the_file_gives_and_never_unenrolls(tmp_path, program):
    enrolled_at = timezone.now() - dt.timedelta(days=400)
    member = CustomerFactory(
        external_ref="C1", email="old@example.com", first_name="Ann", enrolled_at=enrolled_at
    )
    PointsAccount.objects.create(customer=member, balance=0)
    plain = CustomerFactory(external_ref="C2", first_name="Bo", last_name="Ek")
    path = write(
        tmp_path,
        "external_ref,email,first_name,enrolled_at,marketing_consent\n"
        "C1,new@example.com,,2024-01-01,\n"
        "C2,,,2024-02-02T10:00:00,no\n",
    )

    code, out, _err = run("import_customers", path)

    assert code == 0 and "0 customers created, 2 updated" in out and "1 enrolled as members" in out
    member.refresh_from_db()
    assert (member.email, member.first_name, member.enrolled_at) == ("new@example.com", "Ann", enrolled_at)
    plain.refresh_from_db()
    assert (plain.first_name, plain.last_name, plain.marketing_consent_changed_at) == ("Bo", "Ek", None)
    assert plain.enrolled_at == dt.datetime(2024, 2, 2, 10, tzinfo=ZoneInfo(settings.TIME_ZONE))
    assert PointsAccount.objects.filter(pk=plain.pk).exists() and not LedgerEntry.objects.exists()


def test_import_customers_reports_bad_rows_and_imports_the_rest(tmp_path):
    path = write(
        tmp_path,
        "external_ref,email,birthday,language,marketing_consent,enrolled_at\n"
        "C1,not-an-email,,,,\n"
        "C2,,1990-13-01,,,\n"
        "C3,,,xx,,\n"
        "C4,,,,maybe,\n"
        f"C5,,,,,{(timezone.localdate() + dt.timedelta(days=5)).isoformat()}\n"
        "C6,c6@example.com,,,,\n",
    )

    code, out, err = run("import_customers", path)

    assert code == 1 and "1 customers created" in out and "5 bad" in out
    assert [line.split(":")[0] for line in err.strip().splitlines()] == [f"line {n}" for n in range(2, 7)]
    assert list(Customer.objects.values_list("external_ref", flat=True)) == ["C6"]


def test_import_customers_requires_external_ref(tmp_path):
    with pytest.raises(CommandError, match="Missing required column"):
        call_command("import_customers", str(write(tmp_path, "email\na@example.com\n")), stdout=io.StringIO())


# --- The background parser ------------------------------------------------------------


def test_an_error_while_reading_is_raised_in_the_caller():
    def rows():
        yield 2, ["a"]
        raise OSError("disk gone")

    with (
        pytest.raises(OSError, match="disk gone"),
        importing._parsed_chunks(rows(), lambda line, fields: fields, chunk_size=1) as chunks,
    ):
        list(chunks)


def test_leaving_early_stops_the_parser_thread():
    endless = ((n, ["x"]) for n in iter(int, 1))
    before = threading.active_count()

    with importing._parsed_chunks(endless, lambda line, fields: fields, chunk_size=10) as chunks:
        assert len(next(iter(chunks)).rows) == 10

    assert threading.active_count() == before
