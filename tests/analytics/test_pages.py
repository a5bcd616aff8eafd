"""The staff analytics pages: each page shows the latest snapshot's figures to staff only,
every table on them downloads as CSV with the snapshot's rows, the pages keep the strict
CSP (no inline style or script), and before any run staff are told how to compute one."""

import csv
import datetime as dt
import io
import re
from decimal import Decimal

import pytest
from django.urls import reverse

from analytics import services, views
from analytics.models import (
    AnalyticsRun,
    CohortCell,
    CustomerScore,
    MetricValue,
    ModelFit,
    MonthlyCost,
    ProgramEffect,
    Survey,
    SurveyResponse,
)
from tests.factories import CustomerFactory, IntegrationFactory, StaffFactory, UserFactory

from .conftest import local

pytestmark = pytest.mark.django_db

AS_OF = dt.date(2026, 3, 20)
D = dt.date
PAGES = ["analytics-overview", "analytics-cohorts", "analytics-effect", "analytics-customers"]


@pytest.fixture
def shop(buy):
    """The four customers of test_metrics (every figure can be worked out by hand), a
    survey of each kind, and the acquisition spend staff entered for January and February.
    ann (member since 2026-01-05): Jan 2 (two receipts), Jan 20, Feb 10, Mar 5
    bo: Jan 15, Feb 1 (fully refunded), Mar 1
    cy: Feb 3 only (100, 40 refunded)
    di: Dec 28 2025, Jan 4
    """
    ann = CustomerFactory(
        external_ref="ann", first_name="Ann", last_name="Lund", enrolled_at=local(D(2026, 1, 5))
    )
    bo = CustomerFactory(external_ref="bo", first_name="Bo", last_name="Holm")
    cy = CustomerFactory(
        external_ref="cy", first_name="Cy", last_name="Berg", enrolled_at=local(D(2026, 2, 3))
    )
    di = CustomerFactory(external_ref="di", first_name="Di", last_name="Vang")
    buy(ann, D(2026, 1, 2), 50, hour=9)
    buy(ann, D(2026, 1, 2), 30, hour=15)
    buy(ann, D(2026, 1, 20), 40)
    buy(ann, D(2026, 2, 10), 60)
    buy(ann, D(2026, 3, 5), 70)
    buy(bo, D(2026, 1, 15), 100)
    buy(bo, D(2026, 2, 1), 80, refunded=80)
    buy(bo, D(2026, 3, 1), 20)
    buy(cy, D(2026, 2, 3), 100, refunded=40)
    buy(di, D(2025, 12, 28), 10)
    buy(di, D(2026, 1, 4), 10, hour=23)
    nps = Survey.objects.create(name="Recommend us?", kind="nps", question="Would you recommend us?")
    csat = Survey.objects.create(name="Last visit", kind="csat", question="How was your visit?")
    for customer, score in ((ann, 10), (bo, 9), (cy, 3), (di, 8)):
        SurveyResponse.objects.create(
            survey=nps, customer=customer, score=score, answered_at=local(D(2026, 2, 14))
        )
    for customer, score in ((ann, 5), (bo, 2)):
        SurveyResponse.objects.create(
            survey=csat, customer=customer, score=score, answered_at=local(D(2026, 3, 2))
        )
    MonthlyCost.objects.create(month=D(2026, 1, 1), kind="acquisition", amount=Decimal("300.00"))
    MonthlyCost.objects.create(month=D(2026, 2, 1), kind="acquisition", amount=Decimal("500.00"))
    return {"ann": ann, "bo": bo, "cy": cy, "di": di}


@pytest.fixture
def run(shop):
    return services.analytics_refresh(as_of=AS_OF, bootstrap=50)


@pytest.fixture
def staff_client(client):
    client.force_login(StaffFactory(username="analyst"))
    return client


def html_of(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def text_of(html: str) -> str:
    """The page's text with tags dropped and whitespace collapsed, to look for figures."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def csv_links(html: str) -> list[str]:
    return [href.replace("&amp;", "&") for href in re.findall(r'<a href="([^"]+\.csv[^"]*)"', html)]


def csv_rows(client, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200, url
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


# --- What staff see --------------------------------------------------------------------------


def test_overview_shows_the_snapshot_figures_with_its_date_and_parameters(staff_client, run):
    text = text_of(html_of(staff_client.get(reverse("analytics-overview"))))
    assert "Snapshot as of 2026-03-20" in text
    assert "Gross margin 30.0 %" in text and "Trailing windows (days) 90, 365" in text
    # CRR of February: of January's {ann, bo, di} only ann bought in February (1/3); March
    # (1 of February's {ann, cy}) has not ended and says so.
    assert "2026-02 3 1 33.3 % 66.7 % " in text  # base, retained, CRR, churn (rounded, not cut)
    assert re.search(r"2026-03 not ended 2 1 50\.0 % 50\.0 %", text)
    # Second purchase within 30 days: ann (Jan 2 → Jan 20), di (Dec 28 → Jan 4) of the three
    # whose first purchase day is at least 30 days old (cy's is Feb 3: 45 days, also counted).
    second = MetricValue.objects.get(run=run, metric="second_purchase_rate", segment="30")
    assert f"30 {second.denominator:.0f} {second.numerator:.0f} {second.value * 100:.1f} %" in text
    # NPS: 2 promoters, 1 detractor of 4 answers → 25; CSAT: 1 of 2 satisfied → 50 %.
    assert "NPS, all answers 25.0" in text
    assert "CSAT: share satisfied (4–5), all answers 50.0 %" in text
    csat = MetricValue.objects.get(run=run, metric="csat", period="asof", segment="all")
    assert csat.extra["mean"] == 3.5  # METRICS.md: the mean beside the top-two-box share (5 and 2)
    # CAC: 800 DKK spent in January and February, two members enrolled (ann, cy).
    assert "CAC, trailing 12 months (DKK) 400.00" in text
    assert "Recommend us?" in text and "Last visit" in text
    # The top customers by CLV, with their names.
    assert "Ann Lund" in text and "Bo Holm" in text


def test_months_without_survey_answers_are_gaps_on_an_even_time_axis(staff_client, shop):
    # NPS answers in December and February only; CSAT answers in March only (the fixture's).
    nps = Survey.objects.get(kind="nps")
    eva = CustomerFactory(external_ref="eva", first_name="Eva", last_name="Dahl")
    SurveyResponse.objects.create(survey=nps, customer=eva, score=10, answered_at=local(D(2025, 12, 10)))
    run = services.analytics_refresh(as_of=AS_OF, bootstrap=50)
    snapshot = views.Snapshot(run)
    assert [(label, value) for label, value, _ in views._series(snapshot, "nps")] == [
        ("2025-12", 100.0),
        ("2026-01", None),  # no answers: a gap, not left out
        ("2026-02", 25.0),
        ("2026-03", None),
    ]
    assert [label for label, _, _ in views._series(snapshot, "csat")] == ["2026-03"]
    html = html_of(staff_client.get(reverse("analytics-overview")))
    assert "<title>2026-01: –</title>" in html  # the NPS chart's bar for January
    text = text_of(html)
    # The table: every month from the first answer on, none in January.
    assert "2025-12 1 1 0 100.0" in text
    assert "2026-01 0 0 " in text


def test_overview_switches_retention_to_quarters_and_years(staff_client, run):
    text = text_of(html_of(staff_client.get(reverse("analytics-overview"), {"period": "quarter"})))
    assert "Retention and churn by quarter" in text and "2026 Q1" in text
    assert "Customer retention rate (CRR), % by quarter" in text
    text = text_of(html_of(staff_client.get(reverse("analytics-overview"), {"period": "year"})))
    assert "Retention and churn by year" in text and "2025" in text


def test_cohort_page_shows_heat_map_and_counts_with_incomplete_months_marked(staff_client, run):
    html = html_of(staff_client.get(reverse("analytics-cohorts")))
    # January cohort (ann, bo): month 1 only ann (50), month 2 both, but March had not ended.
    january = re.search(r"<th scope=\"row\">2026-01</th>(.*?)</tr>", html, re.S).group(1)
    cells = re.findall(r"<td class=\"(an-num[^\"]*)\"[^>]*>([^<]*)</td>", january)
    assert cells[0][1] == "2"  # cohort size
    assert [text for _, text in cells[1:]] == ["100", "50", "100*"]
    assert "heat-9" in cells[1][0] and "heat-5" in cells[2][0] and "an-incomplete" in cells[3][0]
    rolling = html_of(staff_client.get(reverse("analytics-cohorts"), {"mode": "rolling"}))
    january = re.search(r"<th scope=\"row\">2026-01</th>(.*?)</tr>", rolling, re.S).group(1)
    assert [t for _, t in re.findall(r"<td class=\"(an-num[^\"]*)\"[^>]*>([^<]*)</td>", january)][1:] == [
        "100",
        "100",
        "100*",
    ]
    enrollment = text_of(html_of(staff_client.get(reverse("analytics-cohorts"), {"kind": "enrollment"})))
    assert "Monthly cohorts by enrollment" in enrollment and "2026-01 1 100" in enrollment


def test_customer_page_searches_filters_and_pages(staff_client, run, shop, monkeypatch):
    text = text_of(html_of(staff_client.get(reverse("analytics-customers"))))
    assert "Customers found: 4" in text
    assert all(name in text for name in ("Ann Lund", "Bo Holm", "Cy Berg", "Di Vang"))
    text = text_of(html_of(staff_client.get(reverse("analytics-customers"), {"q": "lund"})))
    assert "Customers found: 1" in text and "Ann Lund" in text and "Bo Holm" not in text
    di = CustomerScore.objects.get(run=run, customer=shop["di"])
    text = text_of(html_of(staff_client.get(reverse("analytics-customers"), {"risk": di.churn_risk})))
    assert "Di Vang" in text
    assert all(
        name not in text
        for name, key in (("Ann Lund", "ann"), ("Bo Holm", "bo"), ("Cy Berg", "cy"))
        if CustomerScore.objects.get(run=run, customer=shop[key]).churn_risk != di.churn_risk
    )
    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    html = html_of(staff_client.get(reverse("analytics-customers"), {"order": "-historical_clv", "page": 2}))
    assert "Page 2 of 2" in text_of(html)
    # Lowest historical CLV last: di spent 20 in all.
    assert "Di Vang" in text_of(html) and "Ann Lund" not in text_of(html)
    assert 'href="?order=-historical_clv&amp;page=1"' in html


def test_effect_page_labels_the_naive_gap_biased_and_says_there_is_no_holdout(staff_client, run):
    text = text_of(html_of(staff_client.get(reverse("analytics-effect"))))
    assert "Naive gap: members vs non-members as they are (biased)" in text
    assert "No randomised program holdout in this snapshot" in text
    naive = ProgramEffect.objects.get(run=run, method="naive", outcome="rpr")
    assert naive.extra["biased"] is True


@pytest.fixture
def simulated_run():
    """Shoppers with a known program effect, enough for difference-in-differences estimates
    per cohort and segment (a smaller population than test_program_effect's)."""
    from rewards.demo import shoppers_simulate, simulated_shoppers_write

    simulation = shoppers_simulate(customers=900, months=24, seed=11, effect=0.3, end=dt.date(2026, 6, 30))
    simulated_shoppers_write(simulation, pos=IntegrationFactory(name="sim-pos"))
    MonthlyCost.objects.create(month=D(2026, 3, 1), kind="program", amount=Decimal("2000.00"))
    return services.analytics_refresh(as_of=dt.date(2026, 6, 30), bootstrap=60)


def test_effect_page_shows_did_with_intervals_balance_segments_cohorts_and_value(staff_client, simulated_run):
    html = html_of(staff_client.get(reverse("analytics-effect")))
    text = text_of(html)
    pooled = ProgramEffect.objects.get(
        run=simulated_run, method="did", cohort=None, segment="all", outcome="spend"
    )
    assert f"{pooled.estimate:,.2f} {pooled.ci_low:,.2f} {pooled.ci_high:,.2f}" in text
    assert f"{pooled.estimate:,.2f} [{pooled.ci_low:,.2f}; {pooled.ci_high:,.2f}]" in text  # the forest plot
    for segment in ("Light buyers", "Medium buyers", "Heavy buyers"):
        assert segment in text
    for b in pooled.extra["balance"]:
        assert f"{b['after']:.3f}" in text
    cohorts = ProgramEffect.objects.filter(run=simulated_run, method="did", cohort__isnull=False)
    assert cohorts.exists()
    for e in cohorts:
        assert e.cohort.strftime("%Y-%m") in text
    assert "Incremental revenue, last 12 months (DKK)" in text
    assert "Program ROI" in text
    # The program's value with the 95 % interval of the estimate it rests on, ROI included.
    revenue = MetricValue.objects.get(run=simulated_run, metric="incremental_revenue")
    low, high = revenue.extra["ci_low"], revenue.extra["ci_high"]
    assert f"{revenue.value:,.2f} {low:,.2f} {high:,.2f}" in text
    rows = csv_rows(staff_client, reverse("analytics-csv", args=["program-value"]))
    value = {row[1]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    roi = MetricValue.objects.get(run=simulated_run, metric="program_roi")
    costs, rewards = roi.extra["program_costs"], roi.extra["rewards_cost"]
    assert costs == 2000
    roi_row = next(row for name, row in value.items() if name.startswith("Program ROI"))
    for bound, key in ((low, "ci_low"), (high, "ci_high")):
        assert float(roi_row[key]) == pytest.approx((bound * roi.extra["margin"] - rewards - costs) / costs)
    assert text.count("(biased)") >= 2  # the naive table and its diamond in the spend chart


def test_pages_read_the_snapshot_in_a_few_queries(staff_client, run, django_assert_max_num_queries):
    # Session, user, the run, the last attempt, all metric values at once, and one query per
    # kind of snapshot row: not one per number.
    budgets = {
        "analytics-overview": 16,
        "analytics-cohorts": 10,
        "analytics-effect": 10,
        "analytics-customers": 12,
    }
    for name, budget in budgets.items():
        with django_assert_max_num_queries(budget):
            staff_client.get(reverse(name))


def test_pages_and_downloads_read_the_snapshot_tables_only(staff_client, run):
    # Nothing is computed when a page opens: no query reads the receipts, the ledger or the
    # rollups the computation starts from.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    sources = re.compile(
        r"\b(rewards_purchase|rewards_refund|rewards_ledgerentry|rewards_redemption|"
        r"analytics_customerday|analytics_customermonth|analytics_surveyresponse)\b"
    )
    urls = [reverse(name) for name in PAGES]
    urls += [reverse("analytics-csv", args=[slug]) for slug in [*views.TABLES, *views.RAW_TABLES]]
    with CaptureQueriesContext(connection) as queries:
        for url in urls:
            response = staff_client.get(url)
            assert response.status_code == 200, url
            if response.streaming:
                b"".join(response.streaming_content)
    assert len(queries) > len(urls)
    assert not [q["sql"] for q in queries if sources.search(q["sql"])]


def test_pages_speak_danish_and_keep_svg_coordinates_unlocalised(staff_client, run):
    html = html_of(staff_client.get(reverse("analytics-overview"), HTTP_ACCEPT_LANGUAGE="da"))
    assert '<html lang="da"' in html
    assert "33,3 %" in html  # February's CRR, written the Danish way
    assert not re.search(r'\s(?:x|y|x1|x2|y1|y2|width|height|cx|cy)="-?\d+,\d', html)


# --- Who may see them --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_visitors_are_sent_to_the_admin_login(client, run, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_anonymous_visitors_get_no_csv(client, run):
    response = client.get(reverse("analytics-csv", args=["scores"]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("name", PAGES)
def test_a_signed_in_customer_who_is_not_staff_is_refused(client, run, shop, name):
    user = UserFactory(username="ann-login")
    shop["ann"].user = user
    shop["ann"].save()
    client.force_login(user)
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert client.get(reverse("analytics-csv", args=["customer-scores"])).status_code == 302


def staff_with(*permissions: str, role: str | None = None):
    """A staff member (not a superuser) with these permissions or this role's group."""
    from django.contrib.auth.models import Group, Permission

    user = StaffFactory(username=f"staff-{role or '-'.join(permissions) or 'none'}", is_superuser=False)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.mark.parametrize("name", PAGES)
def test_staff_without_the_dashboard_permission_are_refused(client, run, name):
    client.force_login(staff_with())
    assert client.get(reverse(name)).status_code == 403
    assert client.get(reverse("analytics-csv", args=["key-figures"])).status_code == 403


def test_the_analyst_role_sees_the_pages_and_downloads_them(client, run):
    from accounts.roles import ANALYST

    client.force_login(staff_with(role=ANALYST))
    html = html_of(client.get(reverse("analytics-overview")))
    assert csv_links(html)
    assert len(csv_rows(client, reverse("analytics-csv", args=["key-figures"]))) > 1
    # Analysts may not open a customer's admin page: the names are not links for them.
    customers = html_of(client.get(reverse("analytics-customers")))
    assert reverse("admin:accounts_customer_changelist") not in customers
    assert f'<a href="{reverse("analytics-overview")}">Analytics</a>' in html_of(
        client.get(reverse("admin:index"))
    )


def test_viewing_without_the_export_permission_shows_no_downloads(client, run):
    client.force_login(staff_with("analytics.view_dashboards"))
    for name in PAGES:
        html = html_of(client.get(reverse(name)))
        assert not csv_links(html) and "data-csv" not in html, name
    assert client.get(reverse("analytics-csv", args=["customer-scores"])).status_code == 403


def test_the_admin_header_links_to_the_analytics_for_those_who_may_see_them(staff_client, client):
    html = html_of(staff_client.get(reverse("admin:index")))
    assert f'<a href="{reverse("analytics-overview")}">Analytics</a>' in html
    client.force_login(staff_with("accounts.view_customer"))
    assert reverse("analytics-overview") not in html_of(client.get(reverse("admin:index")))


# --- Before the first run ----------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_before_any_run_every_page_says_how_to_compute(staff_client, name):
    text = text_of(html_of(staff_client.get(reverse(name))))
    assert "No analytics snapshot yet" in text
    assert "python manage.py compute_analytics" in text
    assert "at 02:15" in text  # the nightly job, from the beat schedule
    assert staff_client.get(reverse("analytics-csv", args=["key-figures"])).status_code == 404


def test_a_failed_run_is_reported_and_the_last_good_one_shown(staff_client, run):
    AnalyticsRun.objects.create(
        as_of=D(2026, 3, 21), status=AnalyticsRun.Status.FAILED, error="OperationalError: disk full"
    )
    text = text_of(html_of(staff_client.get(reverse("analytics-overview"))))
    assert "The latest computation (as of 2026-03-21" in text and "disk full" in text
    assert "Snapshot as of 2026-03-20" in text


# --- CSV and CSP ----------------------------------------------------------------------------------


def test_every_table_on_every_page_downloads_as_csv_with_the_snapshot_rows(staff_client, run):
    for name in PAGES:
        html = html_of(staff_client.get(reverse(name)))
        links = csv_links(html)
        # Every table of the page (not the admin's sidebar) has its download link.
        content = html[html.index('id="content-main"') :]
        assert len(re.findall(r"<table", content)) == len(re.findall(r"data-csv=", content)), name
        assert links, name
        for url in links:
            rows = csv_rows(staff_client, url)
            assert rows[0][0] == "as_of" and len(rows[0]) > 1, url
            assert all(row[0] == "2026-03-20" for row in rows[1:]), url
            assert all(len(row) == len(rows[0]) for row in rows), url
            slug = url.split("/")[-1].split(".csv")[0]
            if slug in views.RAW_TABLES:
                model = views.RAW_TABLES[slug][0]
                assert len(rows) - 1 == model.objects.filter(run=run).count(), slug
            else:
                table = views.TABLES[slug](views.Snapshot(run), _query(url))
                assert len(rows) - 1 == len(list(table.rows)), slug


def _query(url: str):
    from django.http import QueryDict

    return QueryDict(url.split("?", 1)[1] if "?" in url else "")


def test_csv_holds_the_figures_of_the_snapshot(staff_client, run, shop):
    retention = {
        row[1]: row for row in csv_rows(staff_client, reverse("analytics-csv", args=["retention-month"]))
    }
    header = csv_rows(staff_client, reverse("analytics-csv", args=["retention-month"]))[0]
    february = dict(zip(header, retention["2026-02"], strict=True))
    assert float(february["crr"]) == pytest.approx(1 / 3)
    assert (february["base"], february["retained"], february["complete"]) == ("3.0", "1.0", "true")
    scores = csv_rows(staff_client, reverse("analytics-csv", args=["customer-scores"]) + "?q=bo")
    assert len(scores) == 2 and scores[1][1] == "bo"
    cohort = csv_rows(staff_client, reverse("analytics-csv", args=["cohorts-first-purchase"]))
    assert len(cohort) - 1 == CohortCell.objects.filter(run=run, kind="first_purchase").count()
    fits = csv_rows(staff_client, reverse("analytics-csv", args=["fits"]))
    assert len(fits) - 1 == ModelFit.objects.filter(run=run).count()


def test_unknown_csv_table_is_not_found(staff_client, run):
    assert staff_client.get(reverse("analytics-csv", args=["passwords"])).status_code == 404


def test_every_page_table_has_a_csv_slug_and_a_caption(run):
    snapshot = views.Snapshot(run)
    from django.http import QueryDict

    for slug, builder in views.TABLES.items():
        table = builder(snapshot, QueryDict(""))
        assert table.slug == slug and table.caption and table.columns


@pytest.mark.parametrize(
    "name,params",
    [
        ("analytics-overview", {}),
        ("analytics-overview", {"period": "year"}),
        ("analytics-cohorts", {"kind": "enrollment", "mode": "rolling"}),
        ("analytics-effect", {}),
        ("analytics-customers", {"q": "a"}),
    ],
)
def test_pages_have_no_inline_style_script_or_handler(staff_client, run, name, params):
    html = html_of(staff_client.get(reverse(name), params))
    assert not re.search(r"\sstyle\s*=", html, re.I)
    assert not re.search(r"<style", html, re.I)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)
    for tag in re.findall(r"<script\b[^>]*>", html, re.I):
        assert "src=" in tag, tag
    assert "/static/css/analytics.css" in html


def test_charts_are_readable_without_colour(staff_client, run):
    html = html_of(staff_client.get(reverse("analytics-overview")))
    svgs = re.findall(r"<svg class=\"an-svg\".*?</svg>", html, re.S)
    assert svgs
    for svg in svgs:
        assert 'role="img"' in svg and "<title" in svg and "<desc" in svg
        assert "<text" in svg  # values printed, not only drawn
    # The month that had not ended is hatched (a pattern) and starred.
    assert 'fill="url(#' in html and "50*" in html


# --- Staff enter the acquisition spend ---------------------------------------------------------------


def test_staff_enter_the_acquisition_spend_in_the_admin_and_the_next_run_uses_it(staff_client, shop):
    url = reverse("admin:analytics_monthlycost_add")
    data = {"month": "2026-03-01", "kind": "acquisition", "amount": "1200.00", "currency": "DKK", "note": ""}
    assert staff_client.post(url, data).status_code == 302
    services.analytics_refresh(as_of=AS_OF, bootstrap=50)
    rows = csv_rows(staff_client, reverse("analytics-csv", args=["acquisition-month"]))
    march = dict(zip(rows[0], next(r for r in rows if r[1] == "2026-03"), strict=True))
    # Nobody enrolled in March: the spend is there, CAC has no denominator (never 0).
    assert (march["spend"], march["new_members"], march["cac"]) == ("1200.0", "0.0", "")
    text = text_of(html_of(staff_client.get(reverse("analytics-overview"))))
    assert "Enter or correct the monthly costs" in text


def test_a_second_cost_entry_for_the_same_month_is_refused_with_a_message(staff_client):
    url = reverse("admin:analytics_monthlycost_add")
    data = {"month": "2026-04-15", "kind": "acquisition", "amount": "1200.00", "currency": "DKK", "note": ""}
    assert staff_client.post(url, data).status_code == 302
    response = staff_client.post(url, {**data, "month": "2026-04-28"})
    assert response.status_code == 200 and "already exists" in response.content.decode()


# --- In a real browser ----------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_pages_render_in_chromium_without_csp_violations(page, live_server, shop):
    from tests.conftest import ARTIFACTS

    services.analytics_refresh(as_of=AS_OF, bootstrap=50)
    StaffFactory(username="analyst-browser")
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{live_server.url}{reverse('admin:login')}")
    page.fill("#id_username", "analyst-browser")
    page.fill("#id_password", "pw-for-tests-123")
    page.click("input[type=submit]")
    page.get_by_role("link", name="Analytics", exact=True).first.click()
    assert page.get_by_role("heading", name="Snapshot as of 2026-03-20").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    for name in PAGES:
        page.goto(f"{live_server.url}{reverse(name)}")
        # The analytics stylesheet applied (a rule of it, not the admin's).
        assert page.locator(".an-tabs ul").evaluate("e => getComputedStyle(e).display") == "flex"
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
