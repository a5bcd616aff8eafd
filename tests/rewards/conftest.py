# The program, integration and member fixtures are suite-wide: see tests/conftest.py.

import pytest


@pytest.fixture
def api(program):
    """An API client holding the token of a new integration, "Shop POS" (as `client.integration`)."""
    from rest_framework.test import APIClient

    from rewards.services import integration_token_create

    integration, token = integration_token_create(name="Shop POS")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    client.integration = integration
    return client
