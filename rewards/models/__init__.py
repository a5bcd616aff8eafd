"""The loyalty core's data, split by concept: the program's rules, the ledger, the catalog."""

from .catalog import Redemption, Reward
from .ledger import (
    CustomerEvent,
    LedgerCheck,
    LedgerEntry,
    LotConsumption,
    PointsAccount,
    PointsLot,
    Purchase,
    PurchaseLine,
    Refund,
)
from .program import CategoryMultiplier, EventRule, Integration, ProgramRules, Promotion, Tier

__all__ = [
    "CategoryMultiplier",
    "CustomerEvent",
    "EventRule",
    "Integration",
    "LedgerCheck",
    "LedgerEntry",
    "LotConsumption",
    "PointsAccount",
    "PointsLot",
    "ProgramRules",
    "Promotion",
    "Purchase",
    "PurchaseLine",
    "Redemption",
    "Refund",
    "Reward",
    "Tier",
]
