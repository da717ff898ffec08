"""`relay check` for a Graph provider: the app's token, its permission, the mailbox, a test mail.

Graph has no harmless request that Mail.Send alone allows, so the probe is a sendMail with an
empty JSON body: Graph checks the token, the app's access to the mailbox and the mailbox before
it reads the body, so 400 means all three are right and nothing was sent (observed behaviour,
not a documented contract: docs/oauth2.md says so), while 401, 403 and 404 name what is not.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING

from relay.check.report import CheckContext, Found, StageFailure, StageSkipped
from relay.errors import UpstreamError
from relay.providers.presets import GRAPH_URL
from relay.upstream.graph import ACCESS_HINT, MAILBOX_HINT, GraphAccount, GraphTransport

if TYPE_CHECKING:
    import httpx

Stage = Callable[[], Awaitable[Found]]

UNAUTHORIZED_FIX = (
    "the token was refused: check oauth2.scopes (https://graph.microsoft.com/.default) and "
    "that the app registration is in this tenant"
)


class GraphStages:
    """The stages of a Graph provider after the token: probe the mailbox, send a test mail."""

    def __init__(self, context: CheckContext, send_to: str | None) -> None:
        self.context = context
        self.send_to = send_to
        provider = context.provider
        self.account = GraphAccount(
            provider.graph_url or GRAPH_URL,
            context.user.upstream_user,
            context.secret,
            provider.ca_file,
        )

    async def probe(self) -> Found:
        """An empty sendMail: 400 when the token, the permission and the mailbox are right."""
        import httpx

        context = self.context
        facts: dict[str, object] = {"url": self.account.url, "roles": _roles(context)}
        roles = facts["roles"]
        if isinstance(roles, list) and "Mail.Send" not in roles:
            raise StageFailure(
                "the app's token has no Mail.Send role",
                f"roles: {' '.join(roles) or '(none)'}",
                fix=ACCESS_HINT,
                facts=facts,
                hints=False,
            )
        headers = {"Authorization": f"Bearer {context.secret.reveal()}"}
        async with httpx.AsyncClient(
            verify=context.tls.for_ca_file(context.provider.ca_file),
            timeout=httpx.Timeout(context.timeout, connect=context.connect_timeout),
            follow_redirects=False,
            trust_env=False,
        ) as http:
            try:
                response = await http.post(self.account.url, json={}, headers=headers)
            except httpx.HTTPError as error:
                reply = f"{self.account.host}: {type(error).__name__}: {error}"
                fix = "check graph_url and that this host reaches graph.microsoft.com on 443"
                raise StageFailure("Graph cannot be reached", reply, fix=fix, hints=False) from None
        text = _answer(response)
        facts["status"] = response.status_code
        if response.status_code == 400:
            summary = f"Graph took the app's token for {self.account.mailbox} (probe: {text})"
            return Found(summary, facts)
        fixes = {401: UNAUTHORIZED_FIX, 403: ACCESS_HINT, 404: MAILBOX_HINT}
        fix = fixes.get(response.status_code, "see Graph's answer; run the check again later")
        raise StageFailure(f"Graph refused: {text}", text, fix=fix, facts=facts, hints=False)

    async def send(self) -> Found:
        """Send a test mail to --send-to through sendMail (Graph files it in Sent Items)."""
        if self.send_to is None:
            raise StageSkipped("no --send-to given")
        context = self.context
        mail = EmailMessage()
        mail["From"] = context.user.email
        mail["To"] = self.send_to
        mail["Subject"] = "relay check"
        mail["Date"] = formatdate(localtime=True)
        message_id = f"<relay-check-{uuid.uuid4().hex}@{context.config.hostname}>"
        mail["Message-ID"] = message_id
        mail.set_content("A test mail from 'relay check', sent with Microsoft Graph sendMail.\n")
        transport = GraphTransport(context.tls, context.connect_timeout, context.timeout)
        try:
            outcome = await transport.send(self.account, [self.send_to], mail.as_bytes())
        except UpstreamError as error:
            fix = error.hint or "see Graph's answer"
            raise StageFailure(error.text, error.reply.line, fix=fix, hints=False) from None
        reply = outcome.reply.line if outcome.reply else ""
        facts: dict[str, object] = {"message_id": message_id, "to": self.send_to, "reply": reply}
        return Found(f"sent to {self.send_to}; Graph files it in Sent Items itself", facts)


def _roles(context: CheckContext) -> list[str] | str:
    """The roles a JWT access token carries, or why they cannot be read (an opaque token)."""
    parts = context.secret.reveal().split(".")
    if len(parts) != 3:
        return "opaque token: the probe shows what it allows"
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except ValueError:
        return "unreadable token: the probe shows what it allows"
    roles = claims.get("roles") if isinstance(claims, dict) else None
    if isinstance(claims, dict) and isinstance(claims.get("exp"), int | float):
        if claims["exp"] < time.time():
            return "expired token"
    return [str(role) for role in roles] if isinstance(roles, list) else []


def _answer(response: httpx.Response) -> str:
    """Graph's status, error code and message in one line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{response.status_code} {error.get('code', '')}: {error.get('message', '')}"[:300]
    return f"{response.status_code} {response.reason_phrase}"


GRAPH_STAGES = ("graph", "send")
SMTP_STAGE_NAMES = ("dns", "tcp", "tls", "ehlo", "auth", "imap-login", "sent-folder", "sent-copy")


def graph_stages(context: CheckContext, send_to: str | None) -> dict[str, tuple[Stage, float]]:
    """The stages that replace DNS to Sent copy for a Graph provider, with their time limits."""
    stages = GraphStages(context, send_to)
    connect, command = context.connect_timeout, context.timeout
    return {"graph": (stages.probe, connect + command), "send": (stages.send, connect + command)}


def not_run_because(name: str, graph: bool) -> str:
    """Why a stage that did not run was left out."""
    if graph and name in SMTP_STAGE_NAMES:
        return "not used: this provider sends with Graph sendMail, which files the Sent copy"
    if not graph and name == "graph":
        return "not used: this provider sends with SMTP"
    return "not run: a stage failed"
