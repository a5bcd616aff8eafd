"""Measurement data, split by concept: the daily rollup, computation runs and their
snapshots, staff inputs (costs, settings), and surveys."""

from .inputs import AnalyticsSettings, MonthlyCost
from .rollup import CustomerDay, CustomerMonth, RollupGap, RollupState
from .snapshots import AnalyticsRun, CohortCell, CustomerScore, MetricValue, ModelFit, ProgramEffect
from .surveys import Survey, SurveyResponse

__all__ = [
    "AnalyticsRun",
    "AnalyticsSettings",
    "CohortCell",
    "CustomerDay",
    "CustomerMonth",
    "CustomerScore",
    "MetricValue",
    "ModelFit",
    "MonthlyCost",
    "ProgramEffect",
    "RollupGap",
    "RollupState",
    "Survey",
    "SurveyResponse",
]
