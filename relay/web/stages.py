"""A check's stages as the page shows them: each in the reader's words, with the fix to act on."""

from __future__ import annotations

from relay.check.report import CheckReport, StageResult, Status
from relay.web.language import Catalogue

ShownStage = dict[str, str | None]


def shown_stages(report: CheckReport, catalogue: Catalogue) -> list[ShownStage]:
    """The stages that ran, each with its words and the fix a person can act on."""
    return [
        shown_stage(stage, catalogue) for stage in report.stages if stage.status is not Status.SKIP
    ]


def shown_stage(stage: StageResult, catalogue: Catalogue) -> ShownStage:
    """One stage that ran: label, pass or fail, what happened, the provider's words, the fix."""
    return {
        "name": stage.name,
        "label": catalogue.text(f"stage.{stage.name}"),
        "status": stage.status.value,
        "status_label": catalogue.text(f"status.{stage.status.value}"),
        "summary": _summary(stage),
        "reply": _reply(stage),
        "fix": _fix(stage, catalogue),
        "source": stage.source,
    }


def _reply(stage: StageResult) -> str | None:
    """The provider's words: a failure's reply, or what it answered to the test mail."""
    if stage.status is Status.FAIL:
        return stage.reply
    answer = stage.facts.get("reply") if stage.name == "send" else None
    return answer if isinstance(answer, str) else None


def _summary(stage: StageResult) -> str:
    """What happened, without the provider's words where they follow under their own heading."""
    reply = _reply(stage)
    if not reply or reply not in stage.summary:
        return stage.summary
    return stage.summary.replace(reply, "").strip(" :;,")


def _fix(stage: StageResult, catalogue: Catalogue) -> str | None:
    if stage.status is not Status.FAIL:
        return None
    parts = []
    if catalogue.has(f"fix.{stage.name}"):
        parts.append(catalogue.text(f"fix.{stage.name}"))
    # The check's own fix, unless it is an admin's command the user cannot run.
    if stage.fix and "relay " not in stage.fix and "config" not in stage.fix:
        parts.append(stage.fix)
    return " ".join(parts) or catalogue.text("fix.other")
