"""Suite-wide fixtures. The suite runs against real services, never mocks:
PostgreSQL (DATABASE_URL) and Redis (REDIS_URL), a real Celery worker.
"""

import hashlib
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SERVICE_HELP = {
    "PostgreSQL": (
        "DATABASE_URL",
        "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
        "(or: sudo systemctl start postgresql), or point DATABASE_URL at a running server",
    ),
    "Redis": (
        "REDIS_URL",
        "start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 "
        "(or: sudo systemctl start redis-server), or point REDIS_URL at a running server",
    ),
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def pytest_sessionstart(session):
    """Stop at once, naming the service, when PostgreSQL or Redis is not there."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    redis_url = urlsplit(settings.REDIS_URL)
    targets = {
        "PostgreSQL": (db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)),
        "Redis": (redis_url.hostname or "127.0.0.1", redis_url.port or 6379),
    }
    missing = []
    for name, (host, port) in targets.items():
        if not _reachable(host, port):
            variable, how = SERVICE_HELP[name]
            missing.append(f"{name} is not reachable at {host}:{port} ({variable}); {how}.")
    if missing:
        pytest.exit("\n".join(missing), returncode=3)


@pytest.fixture(scope="session")
def celery_app_real():
    """The project's Celery app, pointed at the real Redis broker of the test settings."""
    from loyalty_site.celery import app

    app.control.purge()
    return app


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test databases, and before they are dropped, every Django connection still
    open in this process closed. Django keeps a thread's connections in asgiref's Local, one per
    contextvars context; in a process that ran a browser test (Playwright's sync API switches
    greenlets, each with its own context) a connection opened in one context is out of reach of
    `connections` in another, and one stayed open to the end often enough that pytest could not
    drop the database ("1 other session using the database"). Session fixtures that need the
    database (the Celery worker) are torn down before this."""
    yield
    import gc

    from django.db.backends.base.base import BaseDatabaseWrapper

    for candidate in gc.get_objects():
        # type(), not isinstance(): isinstance asks a lazy object for its __class__, evaluating it
        if issubclass(type(candidate), BaseDatabaseWrapper) and candidate.connection is not None:
            candidate.close()


@pytest.fixture(scope="session")
def celery_worker_real(celery_app_real, django_db_setup, django_db_blocker):
    """A real Celery worker (in a thread of this process) consuming from Redis."""
    from celery.contrib.testing.worker import start_worker

    with (
        django_db_blocker.unblock(),
        start_worker(
            celery_app_real,
            pool="solo",
            concurrency=1,
            perform_ping_check=False,
            shutdown_timeout=30,
            loglevel="WARNING",
        ) as worker,
    ):
        yield worker


# --- The program and its members ----------------------------------------------------------


@pytest.fixture
def program(db):
    """A typical program: 1 point per unit, Bronze/Silver/Gold, 24-month expiry."""
    from tests.factories import program_rules_set, standard_tiers

    program_rules_set(points_per_unit=1, minimum_spend=0, expiry_months=24, signup_bonus=50)
    return standard_tiers()


@pytest.fixture
def integration(db):
    from tests.factories import IntegrationFactory

    return IntegrationFactory(name="pos")


@pytest.fixture
def member(program):
    from rewards.services import customer_enroll
    from tests.factories import CustomerFactory

    customer, _ = customer_enroll(customer=CustomerFactory())
    return customer


# --- Mail: a real SMTP server on loopback -------------------------------------------------


class _Mailbox:
    """What the SMTP server received: parsed messages, newest last."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's handler API
        import email
        from email import policy

        message = email.message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append(message)
        return "250 OK"

    def bodies(self) -> list[str]:
        return [m.get_body(preferencelist=("plain",)).get_content() for m in self.messages]

    def link(self, contains: str) -> str:
        """The last link in the newest message that has one containing `contains`."""
        import re

        for body in reversed(self.bodies()):
            links = [u for u in re.findall(r"https?://\S+", body) if contains in u]
            if links:
                return links[-1]
        raise AssertionError(f"no mail with a link containing {contains!r}; got {len(self.messages)} mails")


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server (aiosmtpd) on 127.0.0.1; Django's SMTP backend sends to it."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailbox = _Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield mailbox
    controller.stop()


# --- The browser: Debian's Chromium driven by Playwright ------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from Debian (never a downloaded browser), for the whole session."""
    import os

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); .ci/run does"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # (setting up data, reading results) are still plain synchronous code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser tab at phone size (360 px wide); on failure its screenshot is saved
    under test-artifacts/."""
    context = browser.new_context(viewport={"width": 360, "height": 800}, locale="en-GB")
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        target = ARTIFACTS / f"{request.node.name}.png"
        tab.screenshot(path=str(target), full_page=True)
        print(f"screenshot of the failed browser test: {target}")
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _own_rate_limit_counts(settings, request):
    """Each test counts its rate limits (sign-up, reset, API per token) in its own Redis
    namespace, so tests that sign up or reset with the same address do not use up one another's
    allowance. Servers run in a subprocess keep the run's namespace from the test settings."""
    test_id = hashlib.sha1(request.node.nodeid.encode(), usedforsecurity=False).hexdigest()[:12]
    settings.RATE_LIMIT_NAMESPACE = f"{settings.RATE_LIMIT_NAMESPACE}{test_id}:"
    from rewards.api import _rate_leases

    _rate_leases.clear()  # requests leased from another test's count


@pytest.fixture
def rate_limit_hour_ahead():
    """The rate limits count in fixed windows of an hour (accounts.security.rate_limit_hit):
    a test that counts up to a limit and then expects a refusal would see the count start
    afresh if the hour turned in between. Near the end of an hour this waits for the next
    one to begin, so the test has at least a minute of the same window."""
    left = 3600 - time.time() % 3600
    if left < 60:
        time.sleep(left + 0.1)


@pytest.fixture(autouse=True)
def _forget_cached_rows():
    """The program's rules and tiers and the API tokens are remembered in memory for a few
    seconds (rewards.selectors, rewards.authentication). A test's rows are rolled back or
    flushed after it, so the next test must not use remembered ids that no longer exist."""
    from rewards.authentication import _token_cache_clear
    from rewards.selectors import _program_cache_clear

    _program_cache_clear()
    _token_cache_clear()
    yield
    _program_cache_clear()
    _token_cache_clear()


@pytest.fixture(autouse=True)
def _default_language_after_each_test():
    """A test that activates a language (a page in Russian, a mail in Danish) leaves it active in
    its thread; the next test starts in the site's default language, whatever ran before it."""
    yield
    from django.utils import translation

    translation.deactivate()
