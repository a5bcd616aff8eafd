"""The per-customer rollups, maintained incrementally: one row per purchase day, and one
per customer and month with purchase days (summed from the days).

Every metric starts here, not at the receipts: a purchase day is a distinct (customer,
calendar date in the program's time zone) with at least one purchase whose net amount
(after refunds) is positive. Days are also stored as integers (days since 1970-01-01,
months since year 0) so that the metric SQL is plain integer arithmetic that PostgreSQL
and SQLite both run.
"""

from django.db import models
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer


class CustomerDay(models.Model):
    """A purchase day. `seq` is its ordinal among the customer's purchase days (1 = first)
    and `prev_day_number` the previous purchase day, so first, second and repeat days and
    inter-purchase times are read without a window function at query time."""

    pk = models.CompositePrimaryKey("customer", "day")
    # No index of its own: the primary key (customer, day) leads with it.
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False
    )
    day = models.DateField(_("day"))
    day_number = models.IntegerField()
    month_number = models.IntegerField()
    # Receipts with a positive net amount that day (several receipts of one visit are one purchase day).
    receipts = models.IntegerField(default=1)
    net_amount = models.DecimalField(max_digits=14, decimal_places=2)
    # At least one of the day's purchases was made as a member.
    as_member = models.BooleanField(default=False)
    seq = models.IntegerField(default=1)
    prev_day_number = models.IntegerField(null=True)

    class Meta:
        verbose_name = _("purchase day")
        verbose_name_plural = _("purchase days")
        indexes = [models.Index(fields=["day_number"], name="analytics_day_number")]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.day}"


class CustomerMonth(models.Model):
    """A customer's purchase days in one calendar month, summed from CustomerDay and kept up to
    date with it: a computation run starts from these (about half as many rows as days)
    instead of grouping every purchase day again. The as-of month is the exception; a run
    sums its days up to the as-of date itself."""

    pk = models.CompositePrimaryKey("customer", "month_number")
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False
    )
    month_number = models.IntegerField()
    days = models.IntegerField()
    receipts = models.IntegerField()
    net_amount = models.DecimalField(max_digits=14, decimal_places=2)
    # Net amount of the days after the customer's first purchase day.
    repeat_net_amount = models.DecimalField(max_digits=14, decimal_places=2)
    first_day_number = models.IntegerField()
    last_day_number = models.IntegerField()
    # The customer's second purchase day, when it falls in this month.
    second_day_number = models.IntegerField(null=True)

    class Meta:
        verbose_name = _("purchase month")
        verbose_name_plural = _("purchase months")

    def __str__(self) -> str:
        return f"{self.customer_id} {self.month_number}"


class RollupState(models.Model):
    """The single row recording how far the rollup has read purchases and refunds (by id),
    so an incremental update reads only what is new (pk is always 1)."""

    purchase_id = models.BigIntegerField(default=0)
    refund_id = models.BigIntegerField(default=0)
    rebuilt_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(pk=1), name="rollup_state_single_row")]

    def __str__(self) -> str:
        return f"rollup up to purchase {self.purchase_id}, refund {self.refund_id}"


class RollupGap(models.Model):
    """A range of purchase (or refund) ids at or below the rollup's watermark that were not
    there when the rollup read past them: taken from the sequence by a transaction that had
    not committed yet, or by one that rolled back (sequences leave holes). The next update
    reads these ids again, with the new ones; an id found is folded in and leaves its range.
    A range is forgotten once no transaction that began before it was noted is still open
    (it can then never fill), see analytics.rollup. Kept on PostgreSQL only: on SQLite one
    writer at a time takes ids above every committed one, so nothing below the watermark is
    ever in flight."""

    class Kind(models.TextChoices):
        PURCHASE = "purchase", _("purchase")
        REFUND = "refund", _("refund")

    pk = models.CompositePrimaryKey("kind", "first_id")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    first_id = models.BigIntegerField()
    last_id = models.BigIntegerField()
    # When the rollup first read past these ids without finding them (the database's clock,
    # after the reading statement began): any transaction that holds one began before.
    noted_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(first_id__lte=models.F("last_id")), name="rollup_gap_range"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} ids {self.first_id}–{self.last_id} not seen (noted {self.noted_at})"
