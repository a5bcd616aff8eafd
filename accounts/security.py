"""Where a request comes from, for login lockouts and rate limits; the rate limits."""

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _


def client_ip(request) -> str | None:
    """REMOTE_ADDR, or with PROXY_COUNT trusted proxies in front the address the nearest
    of them saw (the N-th from the right in X-Forwarded-For), which a client cannot forge."""
    count = getattr(settings, "PROXY_COUNT", 0)
    if count:
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if len(hops) >= count:
            return hops[-count]
    return request.META.get("REMOTE_ADDR")


# --- Rate limits ------------------------------------------------------------------------
# Fixed windows counted in the cache (Redis) with an atomic increment: cheap enough for the
# API's hot path, shared by every process. Login lockouts are django-axes's (in the database).

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    """At most `count` attempts per `seconds`, counted separately for each key in `scope`."""

    scope: str
    count: int
    seconds: int


def rate_limit_hit(limit: Limit, key: str) -> int | None:
    """Count one attempt for `key`. None while within the limit; past it, the seconds until
    the window ends (for Retry-After).

    Keys are HMACs (an email address does not sit in Redis in clear). When the cache does not
    answer, the attempt is allowed and a warning logged: a Redis outage must neither lock
    everyone out nor turn into errors (fail open; login lockouts stay in the database)."""
    now = int(time.time())
    window = now // limit.seconds
    digest = salted_hmac("accounts.rate_limit", f"{limit.scope}:{key}").hexdigest()[:32]
    namespace = getattr(settings, "RATE_LIMIT_NAMESPACE", "")
    cache_key = f"ratelimit:{namespace}{limit.scope}:{digest}:{window}"
    try:
        cache.add(cache_key, 0, timeout=limit.seconds + 5)
        hits = cache.incr(cache_key)
    except Exception as exc:  # redis-py's ConnectionError, TimeoutError, ...; never the caller's problem
        logger.warning("rate limit %s not counted: the cache does not answer (%s)", limit.scope, exc)
        return None
    if hits > limit.count:
        return max(1, (window + 1) * limit.seconds - now)
    return None


def rate_limits_hit(*checks: tuple[Limit, str | None]) -> int | None:
    """Count the attempt under every (limit, key) given (a None key is skipped); the longest
    wait of those exceeded, or None."""
    waits = [rate_limit_hit(limit, key) for limit, key in checks if key]
    return max((w for w in waits if w is not None), default=None)


# Joining sends a confirmation mail, as the reset and the resend do (their limits are in
# accounts/views.py). Per network as generous as a reset: a shop's tablet may sign up a queue
# of customers from one address. The portal's sign-up view calls this.
SIGNUP_PER_ADDRESS = Limit("signup:address", 5, 3600)
SIGNUP_PER_IP = Limit("signup:ip", 20, 3600)


def signup_rate_limit(request, *, email: str) -> tuple[int, str] | None:
    """Count a sign-up about to send a confirmation mail to `email`, per address and per
    network. None while within the limits; past one, (seconds until it ends, the message to
    show next to the email field). Counted whatever becomes of the address, and open when
    the cache does not answer, like the reset."""
    wait = rate_limits_hit((SIGNUP_PER_ADDRESS, email.lower()), (SIGNUP_PER_IP, client_ip(request)))
    if wait is None:
        return None
    return wait, _(
        "Too many sign-ups for this address or from your network. Please try again in an hour; "
        "if you have joined already, look for our confirmation mail or log in."
    )
