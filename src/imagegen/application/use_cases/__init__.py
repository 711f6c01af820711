"""One class per user intention, each with ``async def execute(...)``."""

from imagegen.application.use_cases.billing import (
    Adjust,
    GetSubscription,
    ListBudgets,
    ListPlans,
    Refund,
    RemoveBudget,
    SetBudget,
    Subscribe,
    UsageReport,
    VerifyBilling,
)
from imagegen.application.use_cases.credits import GetBalance, GrantCredits, LedgerReport
from imagegen.application.use_cases.dam import ExportAsset, GetAsset, ListAssets, SaveToDam
from imagegen.application.use_cases.generate import GenerateImages, GenerationOutcome
from imagegen.application.use_cases.history import GetGeneration, ListHistory
from imagegen.application.use_cases.models import EstimateCost, ListModels
from imagegen.application.use_cases.sweeper import SweepExpiredReservations

__all__ = [
    "Adjust",
    "EstimateCost",
    "ExportAsset",
    "GenerateImages",
    "GenerationOutcome",
    "GetAsset",
    "GetBalance",
    "GetGeneration",
    "GetSubscription",
    "GrantCredits",
    "LedgerReport",
    "ListAssets",
    "ListBudgets",
    "ListHistory",
    "ListModels",
    "ListPlans",
    "Refund",
    "RemoveBudget",
    "SaveToDam",
    "SetBudget",
    "Subscribe",
    "SweepExpiredReservations",
    "UsageReport",
    "VerifyBilling",
]
