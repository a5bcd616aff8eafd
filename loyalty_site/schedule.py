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
    # The loyalty core's daily jobs (program time zone), each idempotent for its date.
    "points-expire-daily": {"task": "rewards.points_expire", "schedule": crontab(hour=0, minute=5)},
    "tiers-recalculate-nightly": {"task": "rewards.tiers_recalculate", "schedule": crontab(hour=1, minute=0)},
    "birthday-bonuses-daily": {
        "task": "rewards.birthday_bonuses_award",
        "schedule": crontab(hour=6, minute=0),
    },
    "ledger-check-daily": {"task": "rewards.ledger_check", "schedule": crontab(hour=3, minute=30)},
    # Campaigns: a short dispatcher hands due messages to workers; the sweeper returns rows
    # a dead worker left in "sending".
    "campaigns-dispatch": {"task": "campaigns.dispatch", "schedule": 30.0, "options": {"expires": 25}},
    "campaigns-sweep": {"task": "campaigns.deliveries_sweep", "schedule": 300.0, "options": {"expires": 250}},
    # Analytics: the full refresh as of yesterday after the nightly ledger jobs; the
    # incremental update (rollup, scores of customers who bought) every 15 minutes by day.
    "analytics-refresh-nightly": {"task": "analytics.refresh", "schedule": crontab(hour=2, minute=15)},
    "analytics-update": {
        "task": "analytics.update",
        "schedule": crontab(minute="*/15", hour="7-23"),
        "options": {"expires": 600},
    },
}
