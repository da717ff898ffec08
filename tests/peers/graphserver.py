"""Microsoft Graph's sendMail on loopback, handing the mail to the real Postfix and Dovecot.

The documented contract (learn.microsoft.com/graph/api/user-sendmail, "Send messages with MIME
content"): POST /v1.0/users/{id | userPrincipalName}/sendMail with the MIME message base64 in
a text/plain body, a bearer token of an app with Mail.Send for that mailbox, 202 Accepted with
no body; the message is saved in the Sent Items of the mailbox in the URL. A From naming another
mailbox needs Send As on it (ErrorSendAsDenied otherwise). Errors are {"error": {"code",
"message"}}; 429 carries Retry-After (Graph throttling guidance). GET .../mailFolders/SentItems/
messages?$filter=internetMessageId eq '<id>' (list messages, OData $filter) searches the real
Dovecot Sent folder, for an app with a mail-reading permission.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import smtplib
import ssl
import threading
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from tests.peers.mailpeers import MailAccount, MailPeers
from tests.peers.oauthserver import AuthorizationServer

HOST = "127.0.0.1"
PREFIX = "/v1.0/users/"
SUFFIX = "/sendMail"
SENT_ITEMS = "/mailFolders/SentItems/messages"
READ_ROLES = frozenset({"Mail.Read", "Mail.ReadBasic.All"})
FILTER = re.compile(r"internetMessageId eq '((?:[^']|'')*)'")
MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class GraphReply:
    """A status, its JSON error body (none for 202), and extra headers."""

    status: int
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SendRequest:
    """One sendMail request as the server saw it."""

    mailbox: str
    status: int
    mime: bytes | None


def _error(status: int, code: str, message: str, *headers: tuple[str, str]) -> GraphReply:
    return GraphReply(status, {"error": {"code": code, "message": message}}, headers)


class GraphServer:
    """sendMail in a thread; knobs throttle or deny the next requests."""

    def __init__(self, peers: MailPeers, oauth: AuthorizationServer) -> None:
        self.peers = peers
        self.oauth = oauth
        self._lock = threading.Lock()
        self._throttles: list[tuple[int, str]] = []  # (status, Retry-After) for next requests
        self.denied: set[str] = set()  # mailboxes outside the app's access policy
        self.send_as: dict[str, set[str]] = {}  # mailbox -> addresses it has Send As rights on
        self.drop_next = 0  # answer no more: deliver, then close the connection unanswered
        self.lookups: list[tuple[str, str, int]] = []  # (mailbox, Message-ID, status)
        self.requests: list[SendRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT/v1.0, what relay's graph_url names."""
        if self._httpd is None:
            raise RuntimeError("the Graph server is not running")
        return f"http://{HOST}:{self._httpd.server_port}/v1.0"

    def throttle_next(self, retry_after: str, status: int = 429) -> None:
        """Answer the next request with status and Retry-After: retry_after."""
        with self._lock:
            self._throttles.append((status, retry_after))

    def __enter__(self) -> GraphServer:
        self._httpd = ThreadingHTTPServer((HOST, 0), _Handler)
        self._httpd.graph = self  # type: ignore[attr-defined]  # how the handler finds us
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="graph-server", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def look_up(self, path: str, query: str, headers: dict[str, str]) -> GraphReply:
        """Answer GET .../SentItems/messages?$filter=internetMessageId eq '...'."""
        if not (path.startswith(PREFIX) and path.endswith(SENT_ITEMS)):
            return _error(404, "BadRequest", f"Resource not found for the segment {path!r}.")
        mailbox = unquote(path[len(PREFIX) : -len(SENT_ITEMS)]).lower()
        wanted = FILTER.fullmatch(parse_qs(query).get("$filter", [""])[0])
        reply = self._look_up(mailbox, headers, wanted)
        with self._lock:
            self.lookups.append((mailbox, wanted[1] if wanted else "", reply.status))
        return reply

    def _look_up(
        self, mailbox: str, headers: dict[str, str], wanted: re.Match[str] | None
    ) -> GraphReply:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        roles = self.oauth.app_token_roles(token, mailbox) if scheme == "Bearer" else None
        if roles is None:
            return _error(401, "InvalidAuthenticationToken", "Access token is empty or not valid.")
        if not READ_ROLES & set(roles):
            return _error(403, "ErrorAccessDenied", "Access is denied. Check credentials.")
        account = next((a for a in self.peers.accounts.values() if a.address == mailbox), None)
        if account is None or wanted is None:
            return _error(400, "BadRequest", "Invalid filter clause")
        message_id = wanted[1].replace("''", "'")
        client = self.peers.imap(account)
        try:
            client.select('"Sent"', readonly=True)
            _, found = client.uid("SEARCH", "HEADER", "Message-ID", f'"{message_id}"')
        finally:
            client.logout()
        uids = found[0].split() if found and found[0] else []
        value = [{"id": f"AAMk{uid.decode()}"} for uid in uids[:1]]
        return GraphReply(200, {"value": value})

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> GraphReply | None:
        """Answer one POST; called by the handler threads."""
        if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return _error(404, "BadRequest", f"Resource not found for the segment {path!r}.")
        mailbox = unquote(path[len(PREFIX) : -len(SUFFIX)]).lower()
        reply, mime = self._send(mailbox, headers, body)
        with self._lock:
            self.requests.append(SendRequest(mailbox, reply.status, mime))
            dropped = reply.status == 202 and self.drop_next > 0
            self.drop_next -= int(dropped)
        return None if dropped else reply

    def _send(
        self, mailbox: str, headers: dict[str, str], body: bytes
    ) -> tuple[GraphReply, bytes | None]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        roles = self.oauth.app_token_roles(token, mailbox) if scheme == "Bearer" else None
        if roles is None:
            message = "Access token is empty or not valid."
            return _error(401, "InvalidAuthenticationToken", message), None
        if "Mail.Send" not in roles or mailbox in self.denied:
            return _error(403, "ErrorAccessDenied", "Access is denied. Check credentials."), None
        with self._lock:
            throttle = self._throttles.pop(0) if self._throttles else None
        if throttle is not None:
            status, wait = throttle
            message = "Application is over its MailboxConcurrency limit."
            return _error(status, "ApplicationThrottled", message, ("Retry-After", wait)), None
        account = next((a for a in self.peers.accounts.values() if a.address == mailbox), None)
        if account is None:
            return _error(
                404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid."
            ), None
        if headers.get("content-type", "").split(";")[0].strip() != "text/plain":
            return _error(400, "ErrorInvalidRequest", "Empty Payload. JSON content expected."), None
        try:
            mime = base64.b64decode(body, validate=True)
        except binascii.Error:
            return _error(
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            ), None
        refused = self._send_as_refusal(mailbox, mime)
        if refused is not None:
            return refused, None
        self._deliver(account, mime)
        return GraphReply(202), mime

    def _send_as_refusal(self, mailbox: str, mime: bytes) -> GraphReply | None:
        """Exchange's answer to a From the mailbox has no Send As rights on."""
        header = BytesParser(policy=compat32).parsebytes(mime, headersonly=True)
        senders = {a.lower() for _, a in getaddresses([str(v) for v in header.get_all("from", [])])}
        allowed = {mailbox} | self.send_as.get(mailbox, set())
        if senders <= allowed:
            return None
        message = (
            "The user account which was used to submit this request does not have the right "
            "to send mail on behalf of the specified sending account."
        )
        return _error(403, "ErrorSendAsDenied", message)

    def _deliver(self, account: MailAccount, mime: bytes) -> None:
        """Submit to Postfix as the mailbox (Bcc stripped), then file the whole in its Sent."""
        message = BytesParser(policy=compat32).parsebytes(mime)
        fields = [str(v) for name in ("to", "cc", "bcc") for v in message.get_all(name, [])]
        recipients = [address for _, address in getaddresses(fields) if address]
        del message["Bcc"]
        context = ssl.create_default_context(cafile=str(self.peers.ca_file))
        with smtplib.SMTP(self.peers.host, self.peers.submission_port, timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.login(account.address, account.password)
            smtp.sendmail(account.address, recipients, message.as_bytes())
        client = self.peers.imap(account)
        try:
            client.append("Sent", "(\\Seen)", None, mime)  # saveToSentItems, true by default
        finally:
            client.logout()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    # Headers and body go out as two writes: without this a kept-alive connection waits ~40 ms
    # for the client's delayed ACK on each answer (Nagle), which Graph itself does not.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        graph = cast(GraphServer, self.server.graph)  # type: ignore[attr-defined]
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self._write(_error(413, "RequestEntityTooLarge", "The request is too large."))
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = graph.handle(urlsplit(self.path).path, headers, body)
        if reply is None:  # the answer is lost: the connection drops after the work is done
            self.close_connection = True
            return
        self._write(reply)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        graph = cast(GraphServer, self.server.graph)  # type: ignore[attr-defined]
        headers = {name.lower(): value for name, value in self.headers.items()}
        parts = urlsplit(self.path)
        self._write(graph.look_up(parts.path, parts.query, headers))

    def _write(self, reply: GraphReply) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        if reply.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass
