"""The beat schedule: every periodic job of the site, in one place.

Beat (django-celery-beat's DatabaseScheduler) copies these entries into the
database when it starts, where staff can see, pause or re-time them in the
admin. Each job is idempotent for its date, so a late or repeated run is safe.
"""

from celery.schedules import crontab

BEAT_SCHEDULE = {
    "heartbeat": {
        "task": "loyalty_site.heartbeat",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
}

# Keep the crontab import used for the daily jobs added by the apps.
__all__ = ["BEAT_SCHEDULE", "crontab"]
