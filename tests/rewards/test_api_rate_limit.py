"""The API's rate limit per token: 429 in the API's error shape with Retry-After; each token
counted on its own; with the cache gone, requests pass (never a 500)."""

import socket
import time

import pytest
from rest_framework.test import APIClient

from rewards.services import integration_token_create

LIMIT = 3


def client_for(name: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {integration_token_create(name=name)[1]}")
    return client


@pytest.fixture
def limited(program, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = LIMIT


def test_a_token_past_its_limit_gets_429_with_retry_after(limited):
    till = client_for("Till 1")
    # The count runs in whole minutes: the first LIMIT requests always pass, and with the
    # minute turning at most once during the test, one of the next LIMIT + 1 is refused.
    assert [till.get("/api/v1/rewards").status_code for _ in range(LIMIT)] == [200] * LIMIT
    answers = [till.get("/api/v1/rewards") for _ in range(LIMIT + 1)]
    refused = next(a for a in answers if a.status_code != 200)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused["Retry-After"]) <= 60
    # Another integration's token is counted on its own.
    assert client_for("Web shop").get("/api/v1/rewards").status_code == 200


def test_requests_without_a_valid_token_are_401_not_counted(limited):
    anonymous = APIClient()
    for _ in range(LIMIT * 3):
        assert anonymous.get("/api/v1/rewards").status_code == 401


def test_without_the_cache_the_api_lets_requests_through(limited, settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": settings.REDIS_CACHE_OPTIONS,
        }
    }
    till = client_for("Till 2")
    assert {till.get("/api/v1/rewards").status_code for _ in range(LIMIT * 2)} == {200}


def test_under_a_large_limit_leases_never_let_more_than_the_limit_through(
    db, settings, rate_limit_hour_ahead
):
    # 1,000 a minute: each Redis round trip leases 5 requests. Three processes (their leases
    # forgotten in turn, as separate processes would hold their own) together get at most the
    # limit, and each leased block costs one round trip.
    from django.core.cache import caches

    from rewards import api

    per_minute, window = 1000, 3600  # an hour's window, with at least a minute of it ahead
    assert api._api_rate_lease_size(per_minute) == 5
    leases_of = [{}, {}, {}]
    allowed = 0
    for n in range(1100):
        process = leases_of[n % 3]
        api._rate_leases.clear()
        api._rate_leases.update(process)
        if api._api_rate_limit_hit(42, per_minute, window) is None:
            allowed += 1
        process.clear()
        process.update(api._rate_leases)
    unused = sum(sum(leases.values()) for leases in leases_of)
    assert allowed + unused == per_minute  # nothing counted twice, nothing let through past it
    assert per_minute - 3 * 5 <= allowed <= per_minute
    counted = (
        caches["default"]
        ._cache.get_client(None, write=False)
        .keys(f"*api:token:*:{int(time.time()) // window}")
    )
    assert counted  # the count lives in Redis, not only in the processes
    assert api._api_rate_limit_hit(42, per_minute, window) is not None  # the limit holds afterwards


def test_small_limits_are_counted_exactly_per_request():
    from rewards import api

    assert api._api_rate_lease_size(20_000) == 50
    assert api._api_rate_lease_size(399) == 1
    assert api._api_rate_lease_size(LIMIT) == 1
