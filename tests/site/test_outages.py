"""PostgreSQL or Redis going away under a running server (gunicorn, one worker, persistent
database connections), without stopping the shared services: the server reaches them
through a TCP proxy on loopback that the test cuts and restores (tests/tcp_proxy.py).

- PostgreSQL unavailable: the API answers 503 JSON with Retry-After, pages a calm 503 page;
  nothing is half written, even when the connection dies at COMMIT; the first request after
  the database returns succeeds, with no restart.
- Redis unavailable (refusing, or hanging): purchases, redemptions, events and reads keep
  working (rate limits fail open, nothing on the request path needs the broker); what the
  broker would carry (a triggered campaign) is in the database and done after it returns.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from campaigns import delivery
from campaigns.models import Delivery, InboxMessage
from campaigns.services import campaign_launch
from rewards.ledger_check import ledger_violations
from rewards.models import CustomerEvent, LedgerEntry, PointsAccount, Purchase, Redemption
from rewards.services import integration_token_create
from tests.factories import RewardFactory, campaign_make
from tests.live_server import LiveServer, backends_gone
from tests.rewards.test_portal import member_with_login
from tests.tcp_proxy import TCPProxy

pytestmark = pytest.mark.django_db(transaction=True)


LIVE_APP_NAME = "live-outage-test"


def database_url(port: int) -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@127.0.0.1:{port}/{db['NAME']}?application_name={LIVE_APP_NAME}"


def purchase(external_id: str, customer: str, amount: str = "100.00") -> dict:
    return {
        "external_id": external_id,
        "customer": customer,
        "amount": amount,
        "currency": "DKK",
        "occurred_at": timezone.now().isoformat(),
    }


@pytest.fixture
def anna(program):
    return member_with_login(email="anna.outage@example.com")


@pytest.fixture
def token(program):
    return integration_token_create(name="Till 1")[1]


@pytest.fixture
def session_cookie(anna):
    client = Client()
    client.force_login(anna.user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture
def pg_proxy():
    db = connection.settings_dict
    proxy = TCPProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    yield proxy
    proxy.close()


@pytest.fixture
def redis_proxy(settings):
    target = urlsplit(settings.REDIS_URL)
    proxy = TCPProxy(target.hostname or "127.0.0.1", target.port or 6379)
    proxy.url = f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}"
    yield proxy
    proxy.close()


@pytest.fixture
def server_on(tmp_path):
    servers = []

    def start(**env) -> LiveServer:
        server = LiveServer(env, tmp_path / f"gunicorn-{len(servers)}.log").start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    backends_gone(LIVE_APP_NAME)


def password_reset(server: LiveServer, email: str):
    """The reset form as a browser sends it: its CSRF cookie and token first."""
    form = server.request("GET", "/account/password-reset/")
    cookie = next(
        c.split(";")[0] for c in form.headers["set-cookie"].split(", ") if c.startswith("csrftoken=")
    )
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    return server.request(
        "POST",
        "/account/password-reset/",
        urlencode({"email": email, "csrfmiddlewaretoken": token}),
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
    )


def assert_503_json(answer):
    assert answer.status == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
    error = answer.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "Retry" in error["message"]


# --- PostgreSQL ---------------------------------------------------------------------------


def test_database_outage_answers_503_with_retry_after_and_recovers_by_itself(
    anna, token, session_cookie, pg_proxy, server_on
):
    server = server_on(DATABASE_URL=database_url(pg_proxy.port))
    auth = {"Authorization": f"Bearer {token}"}
    ref = anna.external_ref
    first = server.request("POST", "/api/v1/purchases", purchase("p-1", ref), auth)
    assert first.status == 201, first.text
    assert server.request("GET", "/me/", headers={"Cookie": session_cookie}).status == 200

    pg_proxy.cut()
    assert_503_json(server.request("POST", "/api/v1/purchases", purchase("p-2", ref), auth))
    assert_503_json(server.request("GET", f"/api/v1/customers/{ref}", headers=auth))
    assert_503_json(server.request("POST", "/api/v1/purchases", b"{not json", auth))
    # A member's page fails in the session middleware, before any view: still the calm page.
    page = server.request("GET", "/me/", headers={"Cookie": session_cookie})
    assert page.status == 503
    assert int(page.headers["retry-after"]) > 0
    assert "Back in a moment" in page.text and "Traceback" not in page.text
    assert "text/html" in page.headers["content-type"]

    pg_proxy.restore()
    again = server.request("POST", "/api/v1/purchases", purchase("p-2", ref), auth)
    assert again.status == 201, again.text
    assert server.request("GET", "/me/", headers={"Cookie": session_cookie}).status == 200
    assert sorted(Purchase.objects.values_list("external_id", flat=True)) == ["p-1", "p-2"]
    assert ledger_violations() == []


@pytest.mark.parametrize(
    "who, marker",
    [
        # A known member's purchase is one write statement and no transaction around it
        # (services._purchase_record_unlocked): cut as that statement is sent (its parameters
        # carry the explanation's JSON, the read's do not).
        ("member", b'"code"'),
        # A new customer who enrols at the till goes the locked way: cut at its COMMIT.
        ("new member", b"COMMIT"),
    ],
)
def test_a_connection_lost_before_the_write_lands_leaves_nothing_half_written(
    anna, token, pg_proxy, server_on, who, marker
):
    server = server_on(DATABASE_URL=database_url(pg_proxy.port))
    auth = {"Authorization": f"Bearer {token}"}
    ref = anna.external_ref if who == "member" else "NEW-AT-THE-TILL"
    assert server.request("POST", "/api/v1/purchases", purchase("p-1", anna.external_ref), auth).status == 201
    balance = PointsAccount.objects.get(pk=anna.pk).balance
    entries = LedgerEntry.objects.count()
    body = {**purchase("p-2", ref, "250.00"), "enroll": who != "member"}

    # The purchase, its ledger entry, its lot and the balance would be written together; the
    # bytes that make them real never reach PostgreSQL.
    pg_proxy.cut_on(marker)
    assert_503_json(server.request("POST", "/api/v1/purchases", body, auth))
    assert pg_proxy.cuts == 1
    assert not Purchase.objects.filter(external_id="p-2").exists()
    assert LedgerEntry.objects.count() == entries
    assert PointsAccount.objects.get(pk=anna.pk).balance == balance
    assert ledger_violations() == []

    pg_proxy.restore()
    retried = server.request("POST", "/api/v1/purchases", body, auth)
    assert retried.status == 201, retried.text
    if who == "member":
        assert retried.json()["balance"] == balance + retried.json()["points_earned"] > balance
    assert Purchase.objects.filter(external_id="p-2").count() == 1
    assert ledger_violations() == []


def test_a_purchase_whose_idle_connection_died_is_recorded_once_on_a_new_one(
    anna, token, pg_proxy, server_on
):
    """The plain purchase path skips Django's `SELECT 1` health check and checks the connection
    by using it (rewards/api_fast.py): a connection cut while idle costs a retry, not an error."""
    server = server_on(DATABASE_URL=database_url(pg_proxy.port))
    auth = {"Authorization": f"Bearer {token}"}
    ref = anna.external_ref
    assert server.request("POST", "/api/v1/purchases", purchase("p-1", ref), auth).status == 201
    pg_proxy.cut()  # the worker's kept connection is reset; PostgreSQL itself stays up
    pg_proxy.restore()
    body = purchase("p-2", ref, "250.00")
    again = server.request("POST", "/api/v1/purchases", body, auth)
    assert again.status == 201, again.text
    assert Purchase.objects.filter(external_id="p-2").count() == 1
    replay = server.request("POST", "/api/v1/purchases", body, auth)
    assert (replay.status, replay.json()) == (200, again.json())
    assert ledger_violations() == []


# --- Redis --------------------------------------------------------------------------------


def test_redis_outage_keeps_purchases_redemptions_and_reads_working(
    anna, token, session_cookie, redis_proxy, server_on
):
    reward = RewardFactory(cost_points=100)
    campaign = campaign_launch(
        campaign=campaign_make(
            schedule="triggered",
            trigger="event",
            trigger_event_type="cart_abandoned",
            channel="in_app",
            is_marketing=False,
            contents={"en": ("Forgot something?", "In your basket:\n{{ basket }}")},
        )
    )
    db = connection.settings_dict
    server = server_on(DATABASE_URL=database_url(int(db["PORT"] or 5432)), REDIS_URL=redis_proxy.url)
    auth = {"Authorization": f"Bearer {token}"}
    ref = anna.external_ref
    assert server.request("POST", "/api/v1/purchases", purchase("p-0", ref), auth).status == 201

    for outage, how in ((redis_proxy.cut, "refused"), (redis_proxy.blackhole, "hanging")):
        outage()
        earned = server.request("POST", "/api/v1/purchases", purchase(f"p-{how}", ref, "300.00"), auth)
        assert earned.status == 201, (how, earned.text)
        redeemed = server.request(
            "POST",
            f"/api/v1/customers/{ref}/redemptions",
            {"reward": reward.pk},
            {**auth, "Idempotency-Key": f"redeem-{how}"},
        )
        assert redeemed.status == 201, (how, redeemed.text)
        event = server.request(
            "POST",
            "/api/v1/events",
            {"customer": ref, "type": "cart_abandoned", "external_id": f"cart-{how}", "data": {}},
            auth,
        )
        assert event.status == 201, (how, event.text)
        assert server.request("GET", f"/api/v1/customers/{ref}", headers=auth).status == 200
        assert server.request("GET", "/me/", headers={"Cookie": session_cookie}).status == 200
        # The password reset's rate limit counts in Redis: it lets the request through.
        assert password_reset(server, "anna.outage@example.com").status == 302, how
        health = server.request("GET", "/healthz")
        assert health.status == 503 and health.json()["failed"] == ["broker"]
        redis_proxy.restore()

    assert Redemption.objects.filter(customer=anna).count() == 2
    assert CustomerEvent.objects.filter(customer=anna).count() == 2
    assert ledger_violations() == []
    # The campaign the events trigger needed no message on the broker: the dispatcher (beat,
    # every 30 s, once Redis is back) finds the events in the database.
    assert not Delivery.objects.filter(campaign=campaign).exists()
    delivery.dispatch()
    delivery.deliveries_send()
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 2
    assert InboxMessage.objects.filter(customer=anna).count() == 2
