from django.db import transaction
from django.utils import timezone

from rewards.errors import DomainError

from .models import Campaign, InboxMessage
from .rendering import template_check


def inbox_message_read(*, message: InboxMessage) -> None:
    """Mark read (once: the first reading time is kept)."""
    if message.read_at is None:
        InboxMessage.objects.filter(pk=message.pk, read_at__isnull=True).update(read_at=timezone.now())


# --- Campaign lifecycle ------------------------------------------------------------------------


def campaign_problems(campaign: Campaign) -> list[str]:
    """What stops a campaign from being launched, in words for staff (empty: ready)."""
    from django.utils.translation import gettext as _

    problems = []
    contents = list(campaign.contents.all())
    if not contents:
        problems.append(_("Write the message in at least one language."))
    for content in contents:
        for text in (content.subject, content.body):
            try:
                template_check(text)
            except ValueError as error:
                problems.append(f"[{content.language}] {error}")
    schedule = Campaign.Schedule
    if campaign.schedule == schedule.AT and not campaign.send_at:
        problems.append(_("Choose the date and time to send."))
    if campaign.schedule == schedule.RECURRING and not (campaign.recur_weekdays and campaign.recur_time):
        problems.append(_("Choose the weekdays and the time of a recurring campaign."))
    if campaign.schedule == schedule.TRIGGERED:
        if not campaign.trigger:
            problems.append(_("Choose what triggers the campaign."))
        elif campaign.trigger == Campaign.Trigger.EVENT and not campaign.trigger_event_type:
            problems.append(_("Name the event type that triggers the campaign."))
        elif campaign.trigger in (Campaign.Trigger.AFTER_LAST_PURCHASE, Campaign.Trigger.AFTER_SIGNUP) and (
            campaign.trigger_days is None
        ):
            problems.append(_("Give the number of days."))
    offer = Campaign.Offer
    if campaign.offer == offer.MULTIPLIER and not (
        campaign.offer_multiplier and campaign.offer_starts_at and campaign.offer_ends_at
    ):
        problems.append(_("A multiplier offer needs the multiplier and its date window."))
    window = (campaign.offer_starts_at, campaign.offer_ends_at)
    if campaign.offer == offer.MULTIPLIER and all(window) and window[1] <= window[0]:
        problems.append(_("The offer must end after it starts."))
    if campaign.offer == offer.POINTS and not campaign.offer_points:
        problems.append(_("A points gift needs the number of points."))
    if campaign.offer == offer.VOUCHER and not campaign.offer_reward_id:
        problems.append(_("A voucher offer needs the reward."))
    return problems


@transaction.atomic
def campaign_launch(*, campaign: Campaign, user=None) -> Campaign:
    """Draft or paused → active (the dispatcher takes it from there). Idempotent."""
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if campaign.status == Campaign.Status.ACTIVE:
        return campaign
    if campaign.status == Campaign.Status.FINISHED:
        raise DomainError("A finished campaign cannot be launched again.", code="finished")
    problems = campaign_problems(campaign)
    if problems:
        raise DomainError(" ".join(problems), code="not_ready")
    campaign.status = Campaign.Status.ACTIVE
    campaign.launched_at = campaign.launched_at or timezone.now()
    campaign.save(update_fields=["status", "launched_at"])
    return campaign


def campaign_pause(*, campaign: Campaign) -> None:
    active = Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.ACTIVE)
    active.update(status=Campaign.Status.PAUSED)
