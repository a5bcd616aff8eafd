"""API authentication: `Authorization: Bearer <token>`, one token per integration, stored hashed."""

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from .models import Integration
from .services import token_hash

# Refresh last_used_at at most this often, so reads do not become writes.
LAST_USED_RESOLUTION_SECONDS = 300


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
        integration = Integration.objects.filter(token_hash=token_hash(token), is_active=True).first()
        if integration is None:
            raise exceptions.AuthenticationFailed("The token is not valid or the integration is disabled.")
        now = timezone.now()
        if (
            integration.last_used_at is None
            or (now - integration.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS
        ):
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
