"""The member's journey in a real browser (Debian's Chromium, headless) against a live
server on PostgreSQL: join, the welcome bonus, a purchase from the shop's API, redeem,
the voucher with its QR code, and the pages in Danish and Thai."""

import datetime as dt
import json
import re
import urllib.request

import pytest
from django.utils import timezone, translation
from django.utils.translation import gettext

from accounts.models import Customer
from rewards.services import integration_token_create
from tests.conftest import ARTIFACTS
from tests.factories import RewardFactory

pytestmark = pytest.mark.django_db(transaction=True)


def post_purchase(base_url: str, token: str, **payload) -> dict:
    request = urllib.request.Request(  # noqa: S310 - the live test server over http
        f"{base_url}/api/v1/purchases",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the live test server
        return json.loads(response.read())


def in_language(code: str, text: str) -> str:
    with translation.override(code):
        return gettext(text)


def test_join_earn_redeem_and_read_it_in_danish_and_thai(page, live_server, program, smtp_server):
    RewardFactory(name="Cinnamon bun", cost_points=100, translations={"da": {"name": "Kanelsnegl"}})
    _integration, token = integration_token_create(name="web shop")

    # Join.
    page.goto(f"{live_server.url}/join/")
    page.get_by_label("First name").fill("Mette")
    page.get_by_label("Last name").fill("Holm")
    page.get_by_label("Email", exact=True).fill("mette@example.com")
    page.get_by_label("Password", exact=True).fill("Brave-otter-2026")
    page.get_by_label("Password again").fill("Brave-otter-2026")
    page.get_by_label("Send me offers and news by email").check()
    page.get_by_role("button", name="Join", exact=True).click()
    balance = page.get_by_test_id("balance")
    assert re.search(r"\b50\b", balance.inner_text()), "the welcome bonus shows"

    # Confirm the address with the link from the (real SMTP) mail.
    page.goto(smtp_server.link("/confirm/"))
    assert page.get_by_text("your email address is confirmed").is_visible()

    # The shop's system reports a purchase through the API.
    customer = Customer.objects.get(email="mette@example.com")
    result = post_purchase(
        live_server.url,
        token,
        external_id="web-1001",
        customer=customer.external_ref,
        amount="120.00",
        currency="DKK",
        occurred_at=(timezone.now() - dt.timedelta(minutes=1)).isoformat(),
    )
    assert result["points_earned"] == 120
    page.reload()
    assert re.search(r"\b170\b", page.get_by_test_id("balance").inner_text())

    # Redeem: the catalog, the confirmation step, the voucher and its QR code.
    page.get_by_role("link", name="Rewards", exact=True).click()
    page.get_by_role("link", name="Cinnamon bun").click()
    page.get_by_role("button", name=re.compile("Confirm: redeem for 100 points")).click()
    code = page.get_by_test_id("voucher-code").inner_text().strip()
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", code)
    qr = page.locator(".qr svg")
    assert qr.get_attribute("aria-label") == code and qr.bounding_box()["width"] > 100
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "portal-voucher-360px.png"), full_page=True)

    # Danish, then Thai, from the header's switcher.
    for code_, name in (("da", "dansk"), ("th", "ภาษาไทย")):
        page.get_by_label(re.compile("Language|Sprog|Språk|Язык|ภาษา")).select_option(label=name)
        page.locator(".lang-switch button").click()
        assert page.locator("html").get_attribute("lang") == code_
        nav_label = in_language(code_, "My points")
        assert nav_label != "My points", f"'My points' is not translated into {code_}"
        assert page.get_by_role("link", name=nav_label).is_visible()
        page.get_by_role("link", name=in_language(code_, "Rewards"), exact=True).click()
        assert page.get_by_role("heading", level=1).inner_text() == in_language(code_, "Rewards")
    assert re.search("[\u0e00-\u0e7f]", page.content()), "Thai script on the page"
    page.screenshot(path=str(ARTIFACTS / "portal-rewards-thai-360px.png"), full_page=True)
    customer.refresh_from_db()
    assert customer.language == "th", "the switcher saved the member's choice"


UNLABELLED_CONTROLS = """() => [
    ...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !(el.innerText || '').trim() && !el.title)
    .map(el => el.outerHTML)"""


def test_every_page_has_labelled_controls_one_h1_and_a_keyboard_skip_link(page, live_server, program):
    from tests.rewards.test_portal import PASSWORD, member_with_login

    member_with_login(email="kim@example.com")
    page.goto(f"{live_server.url}/account/login/")
    page.get_by_label("Email", exact=True).fill("kim@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password", exact=True).press("Enter")
    page.wait_for_url(f"{live_server.url}/me/")
    for path in (
        "/me/",
        "/me/history/",
        "/me/rewards/",
        "/me/vouchers/",
        "/me/referral/",
        "/me/inbox/",
        "/account/profile/",
    ):
        page.goto(f"{live_server.url}{path}")
        assert page.evaluate(UNLABELLED_CONTROLS) == [], path
        assert page.locator("h1").count() == 1, path
        # The first Tab lands on the skip link, which moves focus to the content.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip-link", path
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main", path
