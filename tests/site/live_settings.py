"""The test settings as a long-running server uses them: persistent database connections
(CONN_MAX_AGE), so the outage tests see a broken connection being dropped and replaced."""

from loyalty_site.settings.test import *  # noqa: F403
from loyalty_site.settings.test import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 60
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
