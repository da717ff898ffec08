"""relay check: the staged diagnosis of one user's setup, and its report."""

from relay.check.diagnosis import run_check
from relay.check.report import CheckReport, StageResult, Status

__all__ = ["CheckReport", "StageResult", "Status", "run_check"]
