"""Microsoft Graph sendMail as a transport: the MIME message, sent as the organisation's app.

Graph takes the message as base64 text/plain (POST /users/{id}/sendMail, "Send messages with
MIME content") and answers 202; the recipients are the message's To, Cc and Bcc, not an
envelope, so relay names envelope recipients missing from them in a Bcc header and refuses a
mail whose header names someone the envelope does not. Graph files the copy in the mailbox's
Sent Items itself (saveToSentItems defaults to true), so relay files none: in the Sent Items of
the mailbox in the URL (Microsoft Graph, "Send Outlook messages from another user"). One HTTP
client per Graph endpoint and trust is kept open, so TLS is not paid per mail. A request whose
answer is lost after it went out is in doubt, as SMTP's lost reply to DATA is; the Sent Items
query of sent_items_hold() is what relay.queue.indoubt looks at before sending it again.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from relay.errors import (
    DeliveryInDoubt,
    PermanentFailure,
    PermanentLoginRefusal,
    TemporaryFailure,
    Throttled,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from relay.model import Secret
from relay.reply import Reply
from relay.tls import TlsContexts
from relay.upstream.account import SendOutcome

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

ACCEPTED = Reply(250, "2.0.0", "accepted by Microsoft Graph sendMail (202)")
# Graph's throttling answers (Microsoft Graph throttling guidance): wait Retry-After seconds.
THROTTLING = (429, 503, 504)
ACCESS_HINT = (
    "the app needs the Mail.Send application permission with admin consent, and access to "
    "this mailbox (an application access policy or Exchange RBAC for Applications may leave "
    "it out): docs/oauth2.md, Graph"
)
SEND_AS_HINT = (
    "the mailbox sent through has no Send As right on the From address: an Exchange admin runs "
    "Add-RecipientPermission FROM -Trustee MAILBOX -AccessRights SendAs (docs/oauth2.md, "
    "Send As)"
)
MAILBOX_HINT = "the mailbox does not exist or has no Exchange Online licence: check the address"
DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class GraphAccount:
    """Which mailbox to send as, where Graph is, and the app's token."""

    base_url: str  # https://graph.microsoft.com/v1.0
    mailbox: str  # the {id | userPrincipalName} of /users/{id}/sendMail
    token: Secret = field(repr=False)
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        """The sendMail address for the mailbox."""
        return f"{self.base_url}/users/{quote(self.mailbox, safe='@')}/sendMail"

    @property
    def sent_items_url(self) -> str:
        """The mailbox's Sent Items messages (GET /users/{id}/mailFolders/SentItems/messages)."""
        mailbox = quote(self.mailbox, safe="@")
        return f"{self.base_url}/users/{mailbox}/mailFolders/SentItems/messages"

    @property
    def host(self) -> str:
        """Graph's host name, for logs and the attempt's remote."""
        return urlsplit(self.base_url).hostname or self.base_url


class GraphTransport:
    """Sends one MIME message per sendMail request, with bounded waits and verified TLS."""

    def __init__(
        self,
        tls: TlsContexts,
        connect_timeout: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tls = tls
        self._connect = connect_timeout
        self._timeout = timeout
        self._clock = clock
        # (Graph's base URL, CA file) -> the client and the TLS context it was made with.
        self._clients: dict[tuple[str, Path | None], tuple[httpx.AsyncClient, ssl.SSLContext]] = {}
        self.clients_made = 0

    async def send(self, account: GraphAccount, recipients: list[str], data: bytes) -> SendOutcome:
        """Send data to recipients as account; UpstreamError when Graph does not take it."""
        import httpx

        body = base64.b64encode(graph_mime(data, recipients))
        headers = {
            "Authorization": f"Bearer {account.token.reveal()}",
            "Content-Type": "text/plain",
        }
        began = time.monotonic()
        http = await self._client(account)
        try:
            response = await http.post(account.url, content=body, headers=headers)
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as error:
            # The whole request went out and no answer came back: Graph may have sent the mail.
            what = type(error).__name__
            text = f"{account.host}: no answer to sendMail ({what}): it may have sent the mail"
            raise DeliveryInDoubt(451, "4.4.2", text) from None
        except httpx.TimeoutException:
            text = f"{account.host}: no answer to sendMail within {self._timeout:g} s"
            raise UpstreamTimeout(451, "4.4.2", text) from None
        except httpx.HTTPError as error:
            text = f"{account.host}: {type(error).__name__}: {error}"
            raise UpstreamUnavailable(451, "4.4.1", text) from None
        if response.status_code == 202:
            seconds = time.monotonic() - began
            delivered = dict.fromkeys(recipients, ACCEPTED)
            return SendOutcome(reply=ACCEPTED, delivered=delivered, seconds=seconds)
        raise graph_error(response, self._clock())

    async def sent_items_hold(self, account: GraphAccount, message_id: str) -> bool:
        """Whether the mailbox's Sent Items hold message_id; UpstreamError when Graph won't say.

        Needs an application permission that reads mail (Mail.ReadBasic.All or Mail.Read):
        Mail.Send alone is answered 403, and the caller then sends again.
        """
        import httpx

        wanted = message_id if message_id.startswith("<") else f"<{message_id}>"
        # OData: a string literal is in single quotes, a quote inside it doubled.
        literal = wanted.replace("'", "''")
        params = {"$filter": f"internetMessageId eq '{literal}'", "$select": "id", "$top": "1"}
        headers = {"Authorization": f"Bearer {account.token.reveal()}"}
        http = await self._client(account)
        try:
            response = await http.get(account.sent_items_url, params=params, headers=headers)
        except httpx.HTTPError as error:
            text = f"{account.host}: {type(error).__name__}: {error}"
            raise UpstreamUnavailable(451, "4.4.1", text) from None
        if response.status_code != 200:
            raise graph_error(response, self._clock())
        try:
            found = response.json().get("value")
        except (ValueError, AttributeError):
            found = None
        if not isinstance(found, list):
            raise TemporaryFailure(451, "4.3.0", f"{account.host}: Sent Items answer is not a list")
        return bool(found)

    async def close(self) -> None:
        """Close every kept client; the next request opens a new one."""
        clients, self._clients = self._clients, {}
        for http, _ in clients.values():
            await http.aclose()

    async def _client(self, account: GraphAccount) -> httpx.AsyncClient:
        """The open client for this Graph endpoint and trust; a new one once a CA is re-read."""
        import httpx

        key = (account.base_url, account.ca_file)
        context = self._tls.for_ca_file(account.ca_file)
        kept = self._clients.get(key)
        if kept is not None and kept[1] is context and not kept[0].is_closed:
            return kept[0]
        if kept is not None:
            await kept[0].aclose()
        http = httpx.AsyncClient(
            verify=context,
            timeout=httpx.Timeout(self._timeout, connect=self._connect),
            follow_redirects=False,  # the bearer token goes to Graph and nowhere else
            trust_env=False,
        )
        self._clients[key] = (http, context)
        self.clients_made += 1
        return http


def graph_mime(data: bytes, recipients: list[str]) -> bytes:
    """The message as Graph must get it: envelope recipients not in To/Cc/Bcc added as Bcc."""
    header = BytesHeaderParser(policy=compat32).parsebytes(data, headersonly=True)
    named = {
        address.lower()
        for name in ("to", "cc", "bcc")
        for _, address in email.utils.getaddresses([str(v) for v in header.get_all(name, [])])
        if address
    }
    wanted = {r.lower() for r in recipients}
    extra = sorted(named - wanted)
    if extra:
        raise PermanentFailure(
            554,
            "5.6.0",
            "Graph sendMail sends to the message's To, Cc and Bcc, and these are not among its "
            f"envelope recipients: {', '.join(extra[:5])}",
            "send this app's mail with transport: smtp, or address the header to the recipients",
        )
    missing = [r for r in recipients if r.lower() not in named]
    if not missing:
        return data
    newline = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
    return b"Bcc: " + b", ".join(r.encode() for r in missing) + newline + data


def graph_error(response: httpx.Response, now: float) -> UpstreamError:
    """The relay error for a sendMail answer other than 202, with Graph's code and message."""
    status = response.status_code
    code, message = _error_body(response)
    text = f"Graph {status} {code}: {message}" if message else f"Graph {status} {code}"
    if status in THROTTLING:
        wait = retry_after(response.headers.get("Retry-After"), now)
        if wait is not None:
            return Throttled(451, "4.4.5", f"{text} (Retry-After {wait:g} s)", wait)
        return TemporaryFailure(451, "4.4.5", text)
    if status == 401:
        # Answered like a refused SMTP login: relay tries once with a fresh token.
        return PermanentLoginRefusal(535, "5.7.8", text)
    if status == 403:
        hint = SEND_AS_HINT if code == "ErrorSendAsDenied" else ACCESS_HINT
        return PermanentFailure(550, "5.7.1", text, hint)
    if status == 404:
        return PermanentFailure(550, "5.1.1", text, MAILBOX_HINT)
    if status == 413:
        return PermanentFailure(552, "5.3.4", text)
    if status >= 500:
        return TemporaryFailure(451, "4.3.0", text)
    return PermanentFailure(554, "5.0.0", text)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (RFC 9110 §10.2.3: delay-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def _error_body(response: httpx.Response) -> tuple[str, str]:
    """Graph's error code and message ({"error": {"code", "message"}}), one printable line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return response.reason_phrase or "error", _line(response.text)
    return _line(str(error.get("code", "error"))), _line(str(error.get("message", "")))


def _line(text: str) -> str:
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= DETAIL_CHARS else line[: DETAIL_CHARS - 3] + "..."
