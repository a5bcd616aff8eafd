"""What each computation run wrote: the run itself (as-of date and parameters), metric
values, cohort cells, per-customer scores, model fits and program-effect estimates.

Dashboards read these, never the receipts. Rows of a run are written once and never
changed, except that an incremental update may refresh the scores of customers who
bought since (it records that in `CustomerScore.updated_at`).
"""

from django.db import models
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer


class AnalyticsRun(models.Model):
    class Kind(models.TextChoices):
        FULL = "full", _("full refresh")
        INCREMENTAL = "incremental", _("incremental update")

    class Status(models.TextChoices):
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.FULL)
    as_of = models.DateField(_("as of"))
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.RUNNING)
    # Everything the numbers depend on: margin, discount, churn days, windows, currency ...
    parameters = models.JSONField(default=dict)
    # Seconds per phase, and counts (customers, purchase days).
    timings = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("analytics run")
        verbose_name_plural = _("analytics runs")
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "kind", "-id"], name="analytics_run_latest")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} as of {self.as_of} ({self.status})"


class MetricValue(models.Model):
    """One number of one metric for one period and segment, with what it was divided by.

    `value` is null when the denominator is empty (METRICS.md: never 0, never an error).
    """

    run = models.ForeignKey(AnalyticsRun, on_delete=models.CASCADE, related_name="metrics")
    metric = models.CharField(max_length=40)
    # "month", "quarter", "year", "window" (a trailing window of `days`), "asof" (a point in time).
    period = models.CharField(max_length=10)
    period_start = models.DateField(null=True)
    period_end = models.DateField(null=True)
    # "all", "members", "non_members", a survey id, a d of "within d days" ...
    segment = models.CharField(max_length=40, default="all")
    value = models.FloatField(null=True)
    numerator = models.FloatField(null=True)
    denominator = models.FloatField(null=True)
    complete = models.BooleanField(default=True)
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "metric", "period", "period_start", "segment"], name="metric_value_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.metric} {self.period} {self.period_start} {self.segment}: {self.value}"


class CohortCell(models.Model):
    class Kind(models.TextChoices):
        FIRST_PURCHASE = "first_purchase", _("by first purchase")
        ENROLLMENT = "enrollment", _("by enrollment")

    run = models.ForeignKey(AnalyticsRun, on_delete=models.CASCADE, related_name="cohort_cells")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    cohort = models.DateField()  # first day of the cohort's month
    period = models.PositiveSmallIntegerField()  # k: months after the cohort's month
    size = models.IntegerField()
    active = models.IntegerField()  # bought in month c + k
    active_or_later = models.IntegerField()  # bought in month c + k or later
    complete = models.BooleanField()  # month c + k had ended at the as-of date

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "kind", "cohort", "period"], name="cohort_cell_unique")
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.cohort:%Y-%m} +{self.period}: {self.active}/{self.size}"

    @property
    def retention(self) -> float | None:
        return self.active / self.size if self.size else None

    @property
    def rolling_retention(self) -> float | None:
        return self.active_or_later / self.size if self.size else None


class CustomerScore(models.Model):
    """Per shopper, as of the run's date: the BG/NBD inputs, predictions, RFM and churn risk.

    Campaigns target on these: `customer_id`, `p_alive`, `predicted_clv`, `rfm_score`,
    `churn_risk` (see analytics.selectors.customer_scores_latest).
    """

    class Risk(models.TextChoices):
        LOW = "low", _("low")
        MEDIUM = "medium", _("medium")
        HIGH = "high", _("high")
        CHURNED = "churned", _("churned")

    # A run writes a million rows here in one statement. No single-column indexes: (run,
    # customer) and (customer, run) below lead with them. No foreign-key constraints in the
    # database, as for the rollup: their checks at commit take a key-share lock on every
    # customer row (about 10 s a run at a million customers). The rows come from the
    # customers table in the same transaction as their run, and Django still cascades deletes.
    run = models.ForeignKey(
        AnalyticsRun, on_delete=models.CASCADE, related_name="scores", db_index=False, db_constraint=False
    )
    customer = models.ForeignKey(
        Customer,
        on_delete=models.CASCADE,
        related_name="analytics_scores",
        db_index=False,
        db_constraint=False,
    )
    is_member = models.BooleanField(default=False)
    first_day = models.DateField()
    last_day = models.DateField()
    purchase_days = models.IntegerField()
    # BG/NBD inputs in days: repeat purchase days, first → last purchase day, first → as-of.
    frequency = models.IntegerField()
    recency = models.IntegerField()
    age = models.IntegerField()
    net_revenue = models.DecimalField(max_digits=14, decimal_places=2)
    repeat_mean_spend = models.DecimalField(max_digits=14, decimal_places=2, null=True)
    historical_clv = models.DecimalField(max_digits=14, decimal_places=2)
    p_alive = models.FloatField(null=True)
    expected_30 = models.FloatField(null=True)
    expected_90 = models.FloatField(null=True)
    expected_365 = models.FloatField(null=True)
    expected_spend = models.DecimalField(max_digits=14, decimal_places=2, null=True)
    predicted_clv = models.DecimalField(max_digits=14, decimal_places=2, null=True)
    rfm_r = models.PositiveSmallIntegerField()
    rfm_f = models.PositiveSmallIntegerField()
    rfm_m = models.PositiveSmallIntegerField()
    rfm_score = models.PositiveSmallIntegerField()  # R + F + M, 3 … 15
    churn_risk = models.CharField(max_length=8, choices=Risk.choices)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "customer"], name="customer_score_unique")]
        indexes = [
            models.Index(fields=["customer", "run"], name="customer_score_customer"),
            models.Index(fields=["run", "-predicted_clv"], name="customer_score_top_clv"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} as of run {self.run_id}"

    @property
    def rfm_code(self) -> str:
        return f"{self.rfm_r}{self.rfm_f}{self.rfm_m}"


class ModelFit(models.Model):
    class Model(models.TextChoices):
        BGNBD = "bgnbd", "BG/NBD"
        GAMMA_GAMMA = "gamma_gamma", "Gamma-Gamma"

    run = models.ForeignKey(AnalyticsRun, on_delete=models.CASCADE, related_name="fits")
    model = models.CharField(max_length=12, choices=Model.choices)
    parameters = models.JSONField()
    log_likelihood = models.FloatField(null=True)
    customers = models.IntegerField()
    converged = models.BooleanField()
    time_unit = models.CharField(max_length=8, default="days")
    seconds = models.FloatField(default=0)
    message = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "model"], name="model_fit_unique")]

    def __str__(self) -> str:
        return f"{self.model} {self.parameters}"


class ProgramEffect(models.Model):
    """One estimate of what the program adds, with its 95 % interval."""

    class Method(models.TextChoices):
        NAIVE = "naive", _("member vs non-member gap (biased)")
        DID = "did", _("difference-in-differences vs matched non-members")
        HOLDOUT = "holdout", _("randomised holdout")

    run = models.ForeignKey(AnalyticsRun, on_delete=models.CASCADE, related_name="effects")
    method = models.CharField(max_length=8, choices=Method.choices)
    # "purchase_days" (per customer per month), "spend" (per customer per month), "rpr", "crr".
    outcome = models.CharField(max_length=16)
    cohort = models.DateField(null=True)  # enrollment month; null: pooled
    segment = models.CharField(max_length=8, default="all")  # all, light, medium, heavy
    estimate = models.FloatField(null=True)
    ci_low = models.FloatField(null=True)
    ci_high = models.FloatField(null=True)
    treated = models.IntegerField(default=0)
    controls = models.IntegerField(default=0)
    # Means before/after, balance (standardised mean differences), members' and non-members' values.
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["run", "method"], name="program_effect_run")]

    def __str__(self) -> str:
        return f"{self.method} {self.outcome} {self.cohort or 'pooled'} {self.segment}: {self.estimate}"
