"""API authentication: `Authorization: Bearer <token>`, one token per integration, stored hashed."""

import threading
import time

from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from .models import Integration
from .services import token_hash

# Refresh last_used_at at most this often, so reads do not become writes.
LAST_USED_RESOLUTION_SECONDS = 300

# Token hash → active integration, kept in the worker's memory so a request does not spend a
# query on who it is. A save or delete of an integration (revoking a token, issuing a new one,
# disabling it in the admin) clears the copy in that process at once; other processes drop it
# within TOKEN_CACHE_SECONDS, as they do for the program's rules (rewards.selectors). Only
# tokens that were valid are kept; unknown ones always ask the database.
TOKEN_CACHE_SECONDS = 5.0
TOKEN_CACHE_SIZE = 1000
_token_cache: dict[str, tuple[float, Integration]] = {}
_token_lock = threading.Lock()


def _token_cache_clear(**kwargs) -> None:
    with _token_lock:
        _token_cache.clear()


post_save.connect(_token_cache_clear, sender=Integration, dispatch_uid="integration-token-cache")
post_delete.connect(_token_cache_clear, sender=Integration, dispatch_uid="integration-token-cache-del")


def integration_for_token(token: str) -> Integration | None:
    """The active integration holding this token, or None."""
    digest = token_hash(token)
    now = time.monotonic()
    with _token_lock:
        cached = _token_cache.get(digest)
    if cached is not None and cached[0] > now:
        return cached[1]
    integration = Integration.objects.filter(token_hash=digest, is_active=True).first()
    if integration is not None:
        with _token_lock:
            if len(_token_cache) >= TOKEN_CACHE_SIZE:
                _token_cache.clear()
            _token_cache[digest] = (now + TOKEN_CACHE_SECONDS, integration)
    return integration


class IntegrationTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Send the header as `Authorization: Bearer <token>`.")
        try:
            token = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token is not valid.") from None
        integration = integration_for_token(token)
        if integration is None:
            raise exceptions.AuthenticationFailed("The token is not valid or the integration is disabled.")
        now = timezone.now()
        if (
            integration.last_used_at is None
            or (now - integration.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS
        ):
            # The cached copy carries the new time too, so this stays one UPDATE per 5 minutes.
            integration.last_used_at = now
            Integration.objects.filter(pk=integration.pk).update(last_used_at=now)
        return integration, integration

    def authenticate_header(self, request):
        return self.keyword


class IntegrationTokenScheme(OpenApiAuthenticationExtension):
    """Describes the bearer token in the OpenAPI schema."""

    target_class = "rewards.authentication.IntegrationTokenAuthentication"
    name = "integrationToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An integration's token, from `manage.py create_api_token NAME` or the admin.",
        }
