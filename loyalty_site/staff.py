"""The staff panel's own pages, inside the admin: the customer 360 page and the home dashboard.

They compose every app (accounts, rewards, analytics, campaigns), so they live here, where
the site wires the apps together, and read through each app's selectors. They sit under
/admin/ so that the admin's login and the two-factor middleware guard them like any admin
page. Nothing here writes: the buttons of the 360 page post to the admin's own views and
actions, which check the staff member's permissions again on the server.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accounts import roles
from accounts import selectors as account_selectors
from analytics import charts
from analytics import selectors as analytics_selectors
from campaigns import selectors as campaign_selectors
from rewards import rules
from rewards import selectors as reward_selectors
from rewards.models import Redemption

from .celery import HEARTBEAT_CACHE_KEY

# Who may open a customer's 360 page: the customer desk (Support, Program admin, superusers).
# Marketing may look customers up for previews but not read their ledger; analysts neither.
CUSTOMER_360_PERMISSIONS = ("accounts.view_customer", "rewards.view_ledgerentry")
LEDGER_PAGE_SIZE = 25
ACTIVE_DAYS = 90
CHART_WEEKS = 13  # 91 days: the last 90 and today
FAILED_DELIVERIES_DAYS = 7
INTEGRATION_FAILURE_HOURS = 24
# A periodic job counts as late this long after it was due; the beat heartbeat (every
# minute, read by /healthz too) as stale after this long.
JOB_GRACE = dt.timedelta(minutes=10)
HEARTBEAT_STALE = dt.timedelta(minutes=5)


def _number(value, places: int = 0) -> str:
    return formats.number_format(round(value, places), places, use_l10n=True, force_grouping=True)


def _staff_page(view):
    """The admin's guard: staff login (and, through the middleware, the authenticator code),
    no caching, CSRF on the forms."""
    return admin.site.admin_view(view)


# --- The customer 360 page --------------------------------------------------------------------


def can_view_customer_360(user) -> bool:
    return user.is_active and user.is_staff and user.has_perms(CUSTOMER_360_PERMISSIONS)


def _ledger_rows(page) -> list[dict]:
    return [
        {
            "entry": entry,
            "explanation": rules.explain(entry.explanation or []),
        }
        for entry in page
    ]


def _actions(user, customer) -> dict:
    """What the 360 page offers this staff member; each target checks the same permission."""
    portal_login = customer.user
    return {
        "adjust_points": customer.is_member and user.has_perm(roles.ADJUST_POINTS),
        "cancel_redemption": user.has_perm(roles.CANCEL_REDEMPTION),
        "mark_used": user.has_perm(roles.MARK_REDEMPTION_USED),
        "resend_confirmation": bool(
            user.has_perm(roles.RESEND_CONFIRMATION)
            and portal_login is not None
            and portal_login.is_active
            and portal_login.email
            and portal_login.email_confirmed_at is None
        ),
    }


@_staff_page
def customer_360(request, customer_id: int):
    if not can_view_customer_360(request.user):
        raise PermissionDenied
    customer = account_selectors.customer_get(customer_id=customer_id)
    if customer is None:
        raise Http404(_("No customer with this id."))

    account = reward_selectors.account_get(customer_id=customer.pk)
    progress = expiring = None
    if account is not None:
        spend = reward_selectors.qualifying_spend(customer_id=customer.pk, as_of=timezone.now())
        progress = reward_selectors.tier_progress(account=account, spend=spend)
        if progress["progress"] is not None:
            progress["percent"] = round(progress["progress"] * 100)
        expiring = reward_selectors.points_expiring(customer_id=customer.pk, within_days=30)

    ledger = Paginator(
        reward_selectors.ledger_list(customer_id=customer.pk).select_related("staff_user"), LEDGER_PAGE_SIZE
    )
    ledger_page = ledger.get_page(request.GET.get("page"))
    run, score = analytics_selectors.customer_score_latest(customer_id=customer.pk)
    actions = _actions(request.user, customer)
    redemptions = list(reward_selectors.redemptions_of(customer_id=customer.pk)[:50])
    url_360 = reverse("staff-customer-360", args=[customer.pk])

    context = {
        **admin.site.each_context(request),
        "title": customer.display_name,
        "subtitle": _("Customer 360"),
        "customer": customer,
        "account": account,
        "debt": -account.balance if account is not None and account.balance < 0 else 0,
        "progress": progress,
        "expiring": expiring,
        "ledger_page": ledger_page,
        "ledger_rows": _ledger_rows(ledger_page),
        "purchases": reward_selectors.purchases_of(customer_id=customer.pk, limit=20),
        "purchase_totals": reward_selectors.purchase_totals(customer_id=customer.pk),
        "redemptions": redemptions,
        "issued_state": Redemption.State.ISSUED,
        "deliveries": campaign_selectors.deliveries_of(customer_id=customer.pk, limit=30),
        "staff_messages": campaign_selectors.inbox_from_staff(customer_id=customer.pk),
        "survey_answers": analytics_selectors.survey_answers_of(customer_id=customer.pk),
        "run": run,
        "score": score,
        "audit_entries": account_selectors.audit_entries_for_customer(customer_id=customer.pk),
        "actions": actions,
        "currency": settings.PROGRAM_CURRENCY,
        "links": {
            "change": reverse("admin:accounts_customer_change", args=[customer.pk]),
            "adjust": reverse("admin:accounts_customer_adjust_points", args=[customer.pk])
            + "?"
            + urlencode({"next": url_360}),
            "customer_action": reverse("admin:accounts_customer_changelist")
            + "?"
            + urlencode({"id__exact": customer.pk}),
            "redemption_action": reverse("admin:rewards_redemption_changelist")
            + "?"
            + urlencode({"customer__id__exact": customer.pk}),
            "ledger_all": reverse("admin:rewards_ledgerentry_changelist")
            + "?"
            + urlencode({"q": customer.external_ref}),
            "purchases_all": reverse("admin:rewards_purchase_changelist")
            + "?"
            + urlencode({"q": customer.external_ref}),
        },
    }
    return TemplateResponse(request, "staff/customer_360.html", context)


# --- The home dashboard ----------------------------------------------------------------------


@dataclass
class Alert:
    title: str
    detail: str = ""
    items: list[str] = field(default_factory=list)
    link: str = ""
    link_label: str = ""


def _local_midnight(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def _weeks(today: dt.date) -> list[tuple[dt.date, dt.datetime, dt.datetime]]:
    """The last CHART_WEEKS seven-day windows, the newest ending tonight (local time)."""
    first = today - dt.timedelta(days=7 * CHART_WEEKS - 1)
    weeks = []
    for i in range(CHART_WEEKS):
        start = first + dt.timedelta(days=7 * i)
        weeks.append((start, _local_midnight(start), _local_midnight(start + dt.timedelta(days=7))))
    return weeks


def jobs_late(*, now: dt.datetime) -> list[dict]:
    """Enabled periodic jobs (django-celery-beat) whose next run after the last one is more
    than JOB_GRACE overdue. A job that never ran counts from when it was scheduled."""
    from django_celery_beat.models import PeriodicTask

    late = []
    tasks = PeriodicTask.objects.filter(enabled=True, one_off=False, clocked__isnull=True).select_related(
        "interval", "crontab", "solar"
    )
    for task in tasks:
        baseline = task.last_run_at or task.start_time or task.date_changed
        if baseline is None:
            continue
        try:
            remaining = task.schedule.remaining_estimate(baseline)
        except Exception:  # noqa: BLE001 - a schedule beat cannot read either: say it is late
            remaining = -JOB_GRACE * 2
        overdue = -remaining
        if overdue > JOB_GRACE:
            late.append({"task": task, "due_at": now - overdue, "last_run_at": task.last_run_at})
    return late


def heartbeat_age(*, now: dt.datetime) -> dt.timedelta | None:
    """Since when beat and a worker last ran the heartbeat task (None: never, or no cache)."""
    try:
        value = cache.get(HEARTBEAT_CACHE_KEY)
    except Exception:  # noqa: BLE001 - the cache lives on the broker, which may be down
        return None
    if not value:
        return None
    try:
        return now - dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return _("never")
    return formats.date_format(timezone.localtime(value), "SHORT_DATETIME_FORMAT")


def dashboard_alerts(user, *, now: dt.datetime) -> list[Alert]:
    alerts = []

    check = reward_selectors.ledger_check_latest()
    if check is not None and check.violations:
        items = [
            f"{_('customer')} {v['customer_id']}: {'; '.join(v.get('problems', []))}"
            for v in check.details[:5]
        ]
        alerts.append(
            Alert(
                title=ngettext(
                    "The ledger check of %(when)s found %(count)d account in error.",
                    "The ledger check of %(when)s found %(count)d accounts in error.",
                    check.violations,
                )
                % {"when": _when(check.checked_at), "count": check.violations},
                detail=_(
                    "A balance disagrees with its entries or lots; see the worker's log for the full list."
                ),
                items=items,
            )
        )

    failed = campaign_selectors.deliveries_failed(since=now - dt.timedelta(days=FAILED_DELIVERIES_DAYS))
    if failed["count"]:
        latest = failed["latest"]
        alerts.append(
            Alert(
                title=ngettext(
                    "%(count)d campaign delivery failed in the last %(days)d days.",
                    "%(count)d campaign deliveries failed in the last %(days)d days.",
                    failed["count"],
                )
                % {"count": failed["count"], "days": FAILED_DELIVERIES_DAYS},
                detail=_("Latest reason: %(reason)s") % {"reason": latest.reason or "–"} if latest else "",
                link=reverse("admin:campaigns_delivery_changelist")
                + "?"
                + urlencode({"status__exact": "failed"})
                if user.has_perm("campaigns.view_delivery")
                else "",
                link_label=_("See the failed deliveries"),
            )
        )

    late = jobs_late(now=now)
    if late:
        alerts.append(
            Alert(
                title=ngettext(
                    "%(count)d scheduled job did not run on time.",
                    "%(count)d scheduled jobs did not run on time.",
                    len(late),
                )
                % {"count": len(late)},
                items=[
                    _("%(name)s (%(task)s): due %(due)s, last run %(last)s")
                    % {
                        "name": job["task"].name,
                        "task": job["task"].task,
                        "due": _when(job["due_at"]),
                        "last": _when(job["last_run_at"]),
                    }
                    for job in late
                ],
                link=reverse("admin:django_celery_beat_periodictask_changelist")
                if user.has_perm("django_celery_beat.view_periodictask")
                else "",
                link_label=_("See the periodic tasks"),
            )
        )

    age = heartbeat_age(now=now)
    if age is None or age > HEARTBEAT_STALE:
        alerts.append(
            Alert(
                title=_("The scheduler's heartbeat is missing.")
                if age is None
                else _("The scheduler's last heartbeat was %(minutes)d minutes ago.")
                % {"minutes": age.total_seconds() // 60},
                detail=_(
                    "Celery beat queues a heartbeat every minute and a worker records it; without it "
                    "no scheduled job (expiry, tiers, the ledger check, campaigns) runs."
                ),
            )
        )

    failing = reward_selectors.integrations_failing(since=now - dt.timedelta(hours=INTEGRATION_FAILURE_HOURS))
    if failing:
        alerts.append(
            Alert(
                title=ngettext(
                    "%(count)d integration had failed API calls in the last %(hours)d hours.",
                    "%(count)d integrations had failed API calls in the last %(hours)d hours.",
                    len(failing),
                )
                % {"count": len(failing), "hours": INTEGRATION_FAILURE_HOURS},
                items=[
                    ngettext(
                        "%(name)s: %(count)d failed call in all, the last %(when)s (%(error)s)",
                        "%(name)s: %(count)d failed calls in all, the last %(when)s (%(error)s)",
                        integration.failed_calls,
                    )
                    % {
                        "name": integration.name,
                        "count": integration.failed_calls,
                        "when": _when(integration.last_failure_at),
                        "error": integration.last_failure,
                    }
                    for integration in failing
                ],
                link=reverse("admin:rewards_integration_changelist")
                if user.has_perm("rewards.view_integration")
                else "",
                link_label=_("See the integrations"),
            )
        )
    return alerts


def dashboard_figures(*, now: dt.datetime) -> dict:
    """Today's KPIs and the weekly series of the last 90 days: a handful of set-based queries."""
    today = timezone.localdate(now)
    today_start = _local_midnight(today)
    weeks = _weeks(today)
    windows = {
        "today": (today_start, now + dt.timedelta(seconds=1)),
        "days30": (now - dt.timedelta(days=30), now),
    }
    for i, (_start_day, start, end) in enumerate(weeks):
        windows[f"w{i}"] = (start, end)
    flow = reward_selectors.points_flow(windows=windows)
    members = account_selectors.member_counts(weeks=[(s, e) for _d, s, e in weeks])
    active = reward_selectors.active_members(
        since=now - dt.timedelta(days=ACTIVE_DAYS), weeks=[(s, e) for _d, s, e in weeks]
    )
    outstanding = reward_selectors.points_outstanding()
    point_cost = Decimal(analytics_selectors.point_cost())
    liability = (Decimal(outstanding["points"]) * point_cost).quantize(Decimal("0.01"))
    labels = [formats.date_format(start, "j M") for start, _s, _e in weeks]
    last = len(weeks) - 1

    def series(values):
        # The newest week has not ended: hatched and starred like the analytics charts.
        return [(labels[i], value, i != last) for i, value in enumerate(values)]

    charts_ = [
        charts.bar_chart(
            series([flow[f"w{i}"]["issued"] for i in range(len(weeks))]),
            title=_("Points issued per week (earned and bonuses)"),
            unit=_("points"),
        ),
        charts.bar_chart(
            series([flow[f"w{i}"]["redeemed"] for i in range(len(weeks))]),
            title=_("Points redeemed per week (net of cancelled vouchers)"),
            unit=_("points"),
        ),
        charts.bar_chart(
            series(active["weekly"]),
            title=_("Members who bought, per week"),
            unit=_("members"),
        ),
        charts.bar_chart(
            series(members["joined"]),
            title=_("New members per week"),
            unit=_("members"),
        ),
    ]
    table = [
        {
            "week": labels[i],
            "issued": flow[f"w{i}"]["issued"],
            "redeemed": flow[f"w{i}"]["redeemed"],
            "active": active["weekly"][i],
            "joined": members["joined"][i],
            "complete": i != last,
        }
        for i in range(len(weeks))
    ]
    return {
        "members": members["members"],
        "active": active["active"],
        "active_days": ACTIVE_DAYS,
        "flow_today": flow["today"],
        "flow_30": flow["days30"],
        "outstanding": outstanding,
        "point_cost": point_cost,
        "liability": liability,
        "currency": settings.PROGRAM_CURRENCY,
        "charts": charts_,
        "weeks_table": table,
        "first_week": weeks[0][0],
        "today": today,
    }


@_staff_page
def dashboard(request):
    """Every staff role sees it: figures and alerts, no customer's details."""
    now = timezone.now()
    context = {
        **admin.site.each_context(request),
        "title": _("Today"),
        "figures": dashboard_figures(now=now),
        "alerts": dashboard_alerts(request.user, now=now),
        "now": now,
    }
    return TemplateResponse(request, "staff/dashboard.html", context)
