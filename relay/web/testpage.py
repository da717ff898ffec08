"""The Test button: the staged check run for the page, or streamed live as server-sent events."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web

from relay.check.report import StageResult, Status
from relay.model import Secret, User
from relay.web.enroll import holds_secret, run_test
from relay.web.forms import count_password_post, mail_address, typed_password
from relay.web.guard import form_of, require_session, security_headers
from relay.web.language import Catalogue
from relay.web.outcome import Outcome
from relay.web.site import PageError, Site, site_of
from relay.web.stages import shown_stage
from relay.web.users import session_user

logger = logging.getLogger(__name__)

Notice = tuple[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class TestAsked:
    """A Test the page may run: whose, with which password (None: what relay holds), mail to."""

    user: User
    password: Secret | None
    send_to: str | None


async def test(request: web.Request) -> web.StreamResponse:
    """POST /test: run the check; the user's page then shows the report (or the login, once)."""
    site, asked = await _asked(request)
    if isinstance(asked, TestAsked):
        outcome = await run_test(site, asked.user, asked.password, send_to=asked.send_to)
        _keep(request, site, asked, outcome)
    else:
        require_session(request).notice = asked
    return web.Response(status=303, headers={"Location": site.url("/me")})


async def test_live(request: web.Request) -> web.StreamResponse:
    """POST /test/live: the same check, each stage sent as a server-sent event as it ends."""
    site, asked = await _asked(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store"}
    )
    security_headers(site, request, response)
    await response.prepare(request)
    if isinstance(asked, TestAsked):
        catalogue = site.catalogue(request)

        async def on_stage(stage: StageResult) -> None:
            if stage.status is not Status.SKIP:
                await _send(response, "stage", stage_event(stage, catalogue))

        outcome = await run_test(
            site, asked.user, asked.password, send_to=asked.send_to, on_stage=on_stage
        )
        _keep(request, site, asked, outcome)
        passed = outcome.report.passed
    else:
        require_session(request).notice = asked
        passed = False
    await _send(response, "done", {"next": site.url("/me"), "passed": passed})
    await response.write_eof()
    return response


def stage_event(stage: StageResult, catalogue: Catalogue) -> dict[str, str | None]:
    """A stage as the live page draws it, with the headings in the reader's language."""
    return {
        **shown_stage(stage, catalogue),
        "reply_label": catalogue.text("test.reply"),
        "fix_label": catalogue.text("test.fix"),
    }


async def _asked(request: web.Request) -> tuple[Site, TestAsked | Notice]:
    """The Test the form asks for, or the notice saying why it cannot run; PageError if refused."""
    fields = await form_of(request)
    site = site_of(request)
    user = session_user(request, site)
    wait = site.attempts.wait(user.login)
    if wait > 0:
        raise PageError(429, "error.throttled", seconds=f"{wait:.0f}")
    password = typed_password(fields.get("password", ""))
    if password is not None:
        count_password_post(site, request)
    typed_address = fields.get("send_to", "").strip()
    send_to = mail_address(typed_address) if typed_address else None
    if typed_address and send_to is None:
        return site, ("test.bad_address", {"address": typed_address[:100]})
    if password is None and not holds_secret(user, site.store.grants.get(user.login)):
        return site, ("password.missing", {})
    return site, TestAsked(user, password, send_to)


def _keep(request: web.Request, site: Site, asked: TestAsked, outcome: Outcome) -> None:
    """What the next page shows once; a failure counts towards the login's delays."""
    session = require_session(request)
    session.outcome = outcome
    if not outcome.report.passed:
        site.attempts.failed(asked.user.login)
    elif outcome.issued is None:
        session.notice = ("password.kept", {}) if asked.password else ("test.passed", {})


async def _send(response: web.StreamResponse, event: str, data: object) -> None:
    # HTML5 server-sent events: an event name, one data line of JSON, a blank line.
    frame = f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
    try:
        await response.write(frame.encode("utf-8"))
    except ConnectionResetError:
        pass  # the tab closed: the check still finishes, and /me shows it on the next visit
