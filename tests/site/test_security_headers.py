"""Security headers on every kind of response (a portal page, the API, the admin), and a strict
Content-Security-Policy that the portal really lives with: no inline script, style or event
handler in the pages, and no violation reported by a real browser."""

import re

import pytest
from django.urls import reverse

from rewards.services import integration_token_create
from tests.factories import RewardFactory, StaffFactory
from tests.rewards.test_portal import PASSWORD, buy, member_with_login


def directives(response) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy")
    assert header, f"no Content-Security-Policy on {response.request['PATH_INFO']}"
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def assert_secure_headers(response):
    policy = directives(response)
    assert policy["default-src"] == ["'self'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert "'self'" in policy["script-src"]
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"


@pytest.fixture
def member(program):
    return member_with_login()


def test_a_portal_page_sends_the_security_headers(client, member):
    client.force_login(member.user)
    response = client.get(reverse("portal-home"))
    assert response.status_code == 200
    assert_secure_headers(response)


def test_an_api_response_sends_the_security_headers(client, program):
    _integration, token = integration_token_create(name="headers")
    response = client.get("/api/v1/rewards", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert_secure_headers(response)
    assert_secure_headers(client.get("/api/v1/rewards"))  # the 401 too


def test_the_admin_sends_the_security_headers(client, db):
    assert_secure_headers(client.get("/admin/login/"))
    client.force_login(StaffFactory())
    response = client.get("/admin/rewards/reward/add/")
    assert response.status_code == 200
    assert_secure_headers(response)


def test_the_api_docs_still_render_swagger_ui(client, db):
    response = client.get("/api/docs/")
    assert response.status_code == 200 and b"swagger-ui" in response.content


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "inline <script>"),
    (re.compile(r"\sstyle\s*=", re.I), "style attribute"),
    (re.compile(r"<style[\s>]", re.I), "<style> element"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "event handler attribute"),
    (re.compile(r"javascript:", re.I), "javascript: URL"),
]


def test_portal_pages_have_nothing_inline_that_the_policy_blocks(client, member, integration):
    buy(member, integration, "400.00", "p-1")  # a tier on its way: the progress bar shows
    reward = RewardFactory(cost_points=5000)  # out of reach: its card shows a progress bar
    client.force_login(member.user)
    pages = [
        "portal-home",
        "portal-catalog",
        "portal-referral",
        "portal-history",
        "portal-vouchers",
        "profile",
    ]
    for name in pages:
        body = client.get(reverse(name)).content.decode()
        for pattern, what in INLINE:
            match = pattern.search(body)
            assert match is None, f"{what} on {name}: …{body[max(0, match.start() - 80) : match.end() + 80]}…"
    home = client.get(reverse("portal-home")).content.decode()
    assert re.search(r'<progress class="bar" max="100" value="\d+" aria-label="[^"]+">', home)
    catalog = client.get(reverse("portal-catalog")).content.decode()
    assert 'aria-label="Progress to this reward"' in catalog and reward.name in catalog


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_browser_reports_no_policy_violation_on_portal_and_admin_pages(page, live_server, program):
    from rewards.models import Integration

    member = member_with_login()
    buy(member, Integration.objects.create(name="till"), "400.00", "p-1")
    RewardFactory(cost_points=5000)
    violations = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )

    page.goto(f"{live_server.url}/account/login/")
    page.get_by_label("Email").fill(member.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/me/")
    progress = page.locator("progress.bar").first
    assert progress.get_attribute("value") and progress.bounding_box()["width"] > 100
    for path in ["/me/rewards/", "/me/history/", "/me/vouchers/", "/account/profile/"]:
        page.goto(live_server.url + path)

    # The referral link still selects itself on focus, from the static script.
    page.goto(f"{live_server.url}/me/referral/")
    link = page.get_by_label("Your personal link")
    link.focus()
    selected = page.evaluate(
        "() => { const f = document.activeElement; return [f.selectionStart, f.selectionEnd]; }"
    )
    assert selected == [0, len(link.input_value())]

    staff = StaffFactory(password=PASSWORD)
    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill(staff.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    for path in ["/admin/", "/admin/rewards/reward/add/", "/admin/campaigns/segment/add/"]:
        page.goto(live_server.url + path)
        page.wait_for_load_state("networkidle")
    assert violations == []
