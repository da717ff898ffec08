"""An OAuth2 authorization server on loopback, standing in for a mail provider's."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAIL_SCOPE = "mail"  # what Dovecot requires a token to carry (its oauth2 passdb `scope`)
DEFAULT_SCOPES = (MAIL_SCOPE, "offline_access")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CODE_LIFETIME = 600  # RFC 6749 §4.1.2: ten minutes at most is recommended
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5
POLL_SLACK = 0.05  # seconds a poll may come early, for clock granularity
MAX_BODY = 65536
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: base-20, no vowels
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3
CODE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1
CODE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # RFC 7636 §4.2: base64url of SHA-256
NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))  # RFC 6749 §5.1

Form = dict[str, str]
Basic = tuple[str, str] | None  # (client_id, secret) from an HTTP Basic header


@dataclass(frozen=True)
class OAuthClient:
    """A registered client; a public one has no secret."""

    client_id: str
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Grant:
    """One user's consent to one client for some scopes; tokens refer to it."""

    username: str
    client_id: str
    scopes: tuple[str, ...]


@dataclass
class _Access:
    """An access token's grant, scopes and expiry (epoch seconds)."""

    grant: _Grant
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class _Code:
    """An authorization code and what it was issued for."""

    grant: _Grant
    redirect_uri: str
    challenge: str
    expires_at: float
    used: bool = False


@dataclass
class _Device:
    """A pending device authorization (RFC 8628)."""

    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    interval: int
    last_poll: float  # time.monotonic() of issue or last poll
    username: str | None = None
    denied: bool = False


@dataclass(frozen=True)
class _Reply:
    """An HTTP response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class OAuthError(Exception):
    """An error response per RFC 6749 §5.2 (and RFC 8628 §3.5)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status

    def reply(self) -> _Reply:
        """The JSON error response."""
        # RFC 6749 §5.2: a 401 carries WWW-Authenticate for the scheme the client can use.
        extra = (("WWW-Authenticate", 'Basic realm="oauth"'),) if self.status == 401 else ()
        body = {"error": self.error, "error_description": self.description}
        return _json(self.status, body, NO_STORE + extra)


class AuthorizationServer:
    """OAuth2 server (RFC 6749, 7636 PKCE, 8628 device flow, 7662 introspection) in a thread."""

    def __init__(
        self,
        *,
        signed_in_as: str | None = None,
        device_interval: int = 1,
        access_token_lifetime: int = 3600,
        device_code_lifetime: int = 600,
    ) -> None:
        self.client_id = "relay-confidential"
        self.client_secret = secrets.token_urlsafe(24)
        self.public_client_id = "relay-public"
        # The protected resource (Dovecot) authenticates to the introspection endpoint.
        self.resource_client_id = "dovecot"
        self.resource_client_secret = secrets.token_urlsafe(24)
        self._clients = {
            self.client_id: OAuthClient(self.client_id, self.client_secret),
            self.public_client_id: OAuthClient(self.public_client_id),
        }
        self._defaults = (
            signed_in_as,
            device_interval,
            access_token_lifetime,
            device_code_lifetime,
        )
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def __repr__(self) -> str:
        return f"AuthorizationServer(port={self._httpd.server_port if self._httpd else None})"

    def reset(self) -> None:
        """Forget every code, token and request, and set each knob back to its default."""
        with self._lock:
            # Knobs: tests assign these; the handlers read them under the lock.
            self.signed_in_as: str | None = self._defaults[0]
            self.device_interval: int = self._defaults[1]
            self.access_token_lifetime: int = self._defaults[2]
            self.device_code_lifetime: int = self._defaults[3]
            self.deny_next_authorization = False
            self.rotate_refresh_tokens = False
            self._codes: dict[str, _Code] = {}
            self._access: dict[str, _Access] = {}
            self._refresh: dict[str, _Grant] = {}
            self._devices: dict[str, _Device] = {}
            self._refreshes: Counter[str] = Counter()
            self._failures: list[int] = []
            self._token_requests: list[Form] = []
            self._introspections: list[Form] = []

    def start(self) -> None:
        """Bind a free loopback port and serve from a background thread."""
        if self._httpd is not None:
            return
        self._httpd = _HTTPServer(self)
        # A short poll interval: shutdown() waits for the loop to notice, up to one interval.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="oauth-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every connection and wait for the threads; idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> AuthorizationServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT of the running server."""
        if self._httpd is None:
            raise RuntimeError("the authorization server is not running")
        return f"http://{HOST}:{self._httpd.server_port}"

    @property
    def authorize_url(self) -> str:
        """The authorization endpoint (RFC 6749 §3.1)."""
        return f"{self.base_url}/authorize"

    @property
    def token_url(self) -> str:
        """The token endpoint (RFC 6749 §3.2)."""
        return f"{self.base_url}/token"

    @property
    def device_url(self) -> str:
        """The device authorization endpoint (RFC 8628 §3.1)."""
        return f"{self.base_url}/devicecode"

    @property
    def verification_url(self) -> str:
        """Where the user enters a device flow's user code (RFC 8628 §3.2)."""
        return f"{self.base_url}/device"

    @property
    def introspect_url(self) -> str:
        """The introspection endpoint (RFC 7662 §2)."""
        return f"{self.base_url}/introspect"

    @property
    def token_requests(self) -> list[Form]:
        """Every form posted to the token endpoint, secrets and verifiers included."""
        with self._lock:
            return [dict(form) for form in self._token_requests]

    @property
    def introspection_requests(self) -> list[Form]:
        """Every form posted to the introspection endpoint."""
        with self._lock:
            return [dict(form) for form in self._introspections]

    def refresh_count(self, username: str) -> int:
        """How many refresh_token grants were served to username."""
        with self._lock:
            return self._refreshes[username]

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next count token-endpoint requests with status (a 5xx)."""
        if not 500 <= status <= 599 or count < 0:
            raise ValueError(f"fail_next needs count >= 0 and a 5xx status, got {count}, {status}")
        with self._lock:
            self._failures.extend([status] * count)

    def revoke(self, username: str) -> None:
        """Invalidate every access and refresh token of username."""
        with self._lock:
            self._revoke(lambda grant: grant.username == username)

    def expire_access_tokens(self, username: str | None = None) -> None:
        """Make the access tokens of username (or of everyone) expired now."""
        with self._lock:
            for access in self._access.values():
                if username is None or access.grant.username == username:
                    access.expires_at = min(access.expires_at, time.time() - 1)

    def issue_tokens(
        self, username: str, scopes: Sequence[str] = DEFAULT_SCOPES, client_id: str | None = None
    ) -> tuple[str, str]:
        """(access, refresh) tokens of a grant made directly, without any browser."""
        grant = _Grant(username, client_id or self.client_id, tuple(scopes))
        if grant.client_id not in self._clients:
            raise ValueError(f"unknown client_id {grant.client_id!r}")
        with self._lock:
            body = self._issue(grant, grant.scopes, refresh=True)
        return body["access_token"], body["refresh_token"]

    def approve_device(self, user_code: str, username: str) -> None:
        """The user signed in as username approves the device showing user_code."""
        with self._lock:
            self._device_by_user_code(user_code).username = username

    def deny_device(self, user_code: str) -> None:
        """The user declines the device showing user_code."""
        with self._lock:
            self._device_by_user_code(user_code).denied = True

    def handle(self, method: str, path: str, form: Form, basic: Basic) -> _Reply:
        """Answer one request; called by the HTTP handler threads."""
        routes: dict[tuple[str, str], Callable[[Form, Basic], _Reply]] = {
            ("GET", "/authorize"): self._authorize,
            ("GET", "/device"): self._verify_device,
            ("POST", "/token"): self._token,
            ("POST", "/devicecode"): self._device_authorization,
            ("POST", "/introspect"): self._introspect,
        }
        route = routes.get((method, path))
        if route is None:
            allowed = ", ".join(m for m, p in routes if p == path)
            if allowed:
                return _Reply(405, b"method not allowed\n", headers=(("Allow", allowed),))
            return _Reply(404, b"no such endpoint\n")
        with self._lock:
            try:
                return route(form, basic)
            except OAuthError as error:
                return error.reply()

    def _authorize(self, query: Form, _: Basic) -> _Reply:
        """RFC 6749 §4.1.1: sign in as signed_in_as and redirect with a code, PKCE required."""
        client = self._clients.get(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        # §4.1.2.1: without a known client and a valid redirect URI the user sees the error.
        if client is None:
            return _Reply(400, b"unknown client_id\n")
        if not _is_loopback_redirect(redirect_uri):
            return _Reply(400, b"redirect_uri must be http://127.0.0.1:PORT/ or localhost\n")
        answer = {"state": query["state"]} if "state" in query else {}
        try:
            if query.get("response_type") != "code":
                kind = (
                    "invalid_request"
                    if "response_type" not in query
                    else "unsupported_response_type"
                )
                raise OAuthError(kind, "response_type must be code")
            challenge = _required(query, "code_challenge")
            if query.get("code_challenge_method") != "S256":
                raise OAuthError("invalid_request", "code_challenge_method must be S256")
            if not CODE_CHALLENGE.fullmatch(challenge):
                raise OAuthError("invalid_request", "code_challenge is not base64url of SHA-256")
            scopes = _scopes(query.get("scope"))
            denied, self.deny_next_authorization = self.deny_next_authorization, False
            user = self.signed_in_as
            if denied or user is None:
                raise OAuthError("access_denied", "the user did not allow access")
        except OAuthError as error:
            answer |= {"error": error.error, "error_description": error.description}
            return _redirect(redirect_uri, answer)
        code = secrets.token_urlsafe(32)
        grant = _Grant(user, client.client_id, scopes)
        self._codes[code] = _Code(grant, redirect_uri, challenge, time.time() + CODE_LIFETIME)
        return _redirect(redirect_uri, {"code": code} | answer)

    def _token(self, form: Form, basic: Basic) -> _Reply:
        """RFC 6749 §3.2: the token endpoint."""
        self._token_requests.append(dict(form))
        if self._failures:
            status = self._failures.pop(0)
            return _Reply(status, b"<html><body>Service unavailable</body></html>", "text/html")
        client = self._authenticate(form, basic)
        grant_type = _required(form, "grant_type")
        grants = {
            "authorization_code": self._code_grant,
            "refresh_token": self._refresh_grant,
            DEVICE_GRANT: self._device_grant,
        }
        if grant_type not in grants:
            raise OAuthError("unsupported_grant_type", f"{grant_type} is not supported")
        return _json(200, grants[grant_type](client, form), NO_STORE)

    def _code_grant(self, client: OAuthClient, form: Form) -> dict[str, Any]:
        """RFC 6749 §4.1.3 with RFC 7636 §4.6: exchange a code once, with its PKCE verifier."""
        code, redirect_uri = _required(form, "code"), _required(form, "redirect_uri")
        verifier = _required(form, "code_verifier")
        record = self._codes.get(code)
        if record is None or record.expires_at < time.time():
            raise OAuthError("invalid_grant", "authorization code unknown or expired")
        if record.used:
            # §4.1.2: a code used twice is denied, and the tokens issued for it are revoked.
            self._revoke(lambda grant: grant is record.grant)
            raise OAuthError("invalid_grant", "authorization code already used")
        record.used = True
        if record.grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "authorization code was issued to another client")
        if redirect_uri != record.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
        digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not CODE_VERIFIER.fullmatch(verifier) or not secrets.compare_digest(
            expected, record.challenge
        ):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return self._issue(record.grant, record.grant.scopes, refresh=True)

    def _refresh_grant(self, client: OAuthClient, form: Form) -> dict[str, Any]:
        """RFC 6749 §6: a new access token, and a new refresh token when rotating."""
        refresh = _required(form, "refresh_token")
        grant = self._refresh.get(refresh)
        if grant is None:
            raise OAuthError("invalid_grant", "refresh token is invalid, expired or revoked")
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "refresh token was issued to another client")
        scopes = _scopes(form["scope"]) if "scope" in form else grant.scopes
        if not set(scopes) <= set(grant.scopes):
            raise OAuthError("invalid_scope", "scope exceeds what the user granted")
        if self.rotate_refresh_tokens:
            del self._refresh[refresh]
        self._refreshes[grant.username] += 1
        return self._issue(grant, scopes, refresh=self.rotate_refresh_tokens)

    def _device_grant(self, client: OAuthClient, form: Form) -> dict[str, Any]:
        """RFC 8628 §3.4, §3.5: poll for the user's decision."""
        device_code = _required(form, "device_code")
        device = self._devices.get(device_code)
        if device is None or device.client_id != client.client_id:
            raise OAuthError("invalid_grant", "device_code unknown or issued to another client")
        if time.time() > device.expires_at:
            raise OAuthError("expired_token", "device_code expired; start again")
        now = time.monotonic()
        too_soon = now - device.last_poll < device.interval - POLL_SLACK
        device.last_poll = now
        if too_soon:
            device.interval += SLOW_DOWN_STEP
            raise OAuthError("slow_down", f"poll at most every {device.interval:g} s")
        if device.denied:
            raise OAuthError("access_denied", "the user declined")
        if device.username is None:
            raise OAuthError("authorization_pending", "the user has not answered yet")
        del self._devices[device_code]
        grant = _Grant(device.username, client.client_id, device.scopes)
        return self._issue(grant, grant.scopes, refresh=True)

    def _device_authorization(self, form: Form, basic: Basic) -> _Reply:
        """RFC 8628 §3.1, §3.2: a device code and a user code to enter at verification_url."""
        client = self._authenticate(form, basic)
        scopes = _scopes(form.get("scope"))
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
        user_code = f"{user_code[:4]}-{user_code[4:]}"
        expires_at = time.time() + self.device_code_lifetime
        self._devices[device_code] = _Device(
            user_code, client.client_id, scopes, expires_at, self.device_interval, time.monotonic()
        )
        body = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.verification_url,
            "verification_uri_complete": f"{self.verification_url}?user_code={user_code}",
            "expires_in": self.device_code_lifetime,
            "interval": self.device_interval,
        }
        return _json(200, body, NO_STORE)

    def _verify_device(self, query: Form, _: Basic) -> _Reply:
        """The verification page: with ?user_code=, signed_in_as approves (or denies) it."""
        if "user_code" not in query:
            return _Reply(200, b"Enter the code shown on your device.\n")
        try:
            device = self._device_by_user_code(query["user_code"])
        except KeyError:
            return _Reply(400, b"unknown code\n")
        denied, self.deny_next_authorization = self.deny_next_authorization, False
        user = self.signed_in_as
        if denied or user is None:
            device.denied = True
            return _Reply(200, b"Access denied.\n")
        device.username = user
        return _Reply(200, b"Device approved; you may close this window.\n")

    def _introspect(self, form: Form, basic: Basic) -> _Reply:
        """RFC 7662 §2.2: whether an access token is active, and for whom."""
        client_id, secret = _credentials(form, basic)
        if client_id != self.resource_client_id or not secrets.compare_digest(
            secret or "", self.resource_client_secret
        ):
            raise OAuthError(
                "invalid_client", "introspection needs the resource's credentials", 401
            )
        self._introspections.append(dict(form))
        access = self._access.get(_required(form, "token"))
        # Only access tokens are introspected active: a refresh token is no bearer credential.
        if access is None or access.expires_at <= time.time():
            return _json(200, {"active": False}, NO_STORE)
        body = {
            "active": True,
            "username": access.grant.username,
            "sub": access.grant.username,
            "scope": " ".join(access.scopes),
            "client_id": access.grant.client_id,
            "token_type": "Bearer",
            "exp": int(access.expires_at),
        }
        return _json(200, body, NO_STORE)

    def _authenticate(self, form: Form, basic: Basic) -> OAuthClient:
        """RFC 6749 §2.3: the client, by Basic auth or client_secret in the body, or public."""
        if basic is not None and "client_secret" in form:
            raise OAuthError("invalid_request", "more than one client authentication method")
        if basic is not None and form.get("client_id", basic[0]) != basic[0]:
            raise OAuthError("invalid_request", "client_id differs from the Basic credentials")
        client_id, secret = _credentials(form, basic)
        client = self._clients.get(client_id or "")
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        if client.secret is None and secret is not None:
            raise OAuthError("invalid_client", "a public client must not send a secret", 401)
        if client.secret is not None and not secrets.compare_digest(secret or "", client.secret):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client

    def _issue(self, grant: _Grant, scopes: tuple[str, ...], refresh: bool) -> dict[str, Any]:
        """Store and describe a new access token, and a refresh token if asked (§5.1)."""
        access = secrets.token_urlsafe(32)
        lifetime = self.access_token_lifetime
        self._access[access] = _Access(grant, scopes, time.time() + lifetime)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(scopes),
        }
        if refresh:
            body["refresh_token"] = secrets.token_urlsafe(32)
            self._refresh[body["refresh_token"]] = grant
        return body

    def _revoke(self, matches: Callable[[_Grant], bool]) -> None:
        """Drop the access and refresh tokens of every grant that matches."""
        self._access = {t: a for t, a in self._access.items() if not matches(a.grant)}
        self._refresh = {t: g for t, g in self._refresh.items() if not matches(g)}

    def _device_by_user_code(self, user_code: str) -> _Device:
        """The pending device for a user code, ignoring case and dashes (RFC 8628 §6.1)."""
        wanted = user_code.replace("-", "").upper()
        for device in self._devices.values():
            if device.user_code.replace("-", "") == wanted:
                return device
        raise KeyError(f"no pending device authorization with user code {user_code!r}")


class _HTTPServer(ThreadingHTTPServer):
    """The listener; it tracks connections so stop() can end idle keep-alive ones."""

    def __init__(self, owner: AuthorizationServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((HOST, 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection so its handler thread ends."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, lets the AuthorizationServer answer it, and writes the reply."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real providers do
    timeout = 30

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        self._answer("GET", url.path, url.query)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        if "Transfer-Encoding" in self.headers:
            self._write(_Reply(411, b"send a Content-Length\n"))
            self.close_connection = True
            return
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self._write(_Reply(413 if length.isdigit() else 400, b"bad Content-Length\n"))
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            error = OAuthError(
                "invalid_request", "the body must be application/x-www-form-urlencoded"
            )
            self._write(error.reply())
            return
        self._answer("POST", url.path, body.decode("utf-8", "replace"))

    def _answer(self, method: str, path: str, encoded: str) -> None:
        """Parse the parameters, dispatch, and write the reply (a 500 on a bug)."""
        owner = cast(_HTTPServer, self.server).owner
        try:
            reply = owner.handle(method, path, _parameters(encoded), self._basic())
        except OAuthError as error:
            reply = error.reply()
        except Exception:
            logger.exception("oauthserver.bug method=%s path=%s", method, path)
            reply = _Reply(500, b"internal error\n")
        self._write(reply)

    def _basic(self) -> Basic:
        """The client credentials of an Authorization: Basic header (RFC 6749 §2.3.1)."""
        header = self.headers.get("Authorization")
        if header is None or not header.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
        client_id, _, secret = decoded.partition(":")
        # §2.3.1: both halves are form-urlencoded before they are joined.
        return unquote_plus(client_id), unquote_plus(secret)

    def _write(self, reply: _Reply) -> None:
        """Send reply with a Content-Length, so the connection can stay open."""
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        logger.debug("oauthserver.request %s", format % args)


def _parameters(encoded: str) -> Form:
    """Parameters of a query or form; empty ones count as absent, repeats are refused."""
    form: Form = {}
    for name, value in parse_qsl(encoded, keep_blank_values=True):
        if name in form:
            # RFC 6749 §3.1, §3.2: parameters MUST NOT be included more than once.
            raise OAuthError("invalid_request", f"{name} given more than once")
        if value:
            form[name] = value
    return form


def _credentials(form: Form, basic: Basic) -> tuple[str | None, str | None]:
    """(client_id, secret) from Basic credentials if given, else from the form."""
    if basic is not None:
        return basic
    return form.get("client_id"), form.get("client_secret")


def _required(form: Form, name: str) -> str:
    """A parameter that must be present."""
    if name not in form:
        raise OAuthError("invalid_request", f"{name} is required")
    return form[name]


def _scopes(scope: str | None) -> tuple[str, ...]:
    """Requested scopes (RFC 6749 §3.3), or the default set when none are given."""
    if scope is None:
        return DEFAULT_SCOPES
    scopes = tuple(dict.fromkeys(scope.split(" ")))
    if not all(SCOPE_TOKEN.fullmatch(token) for token in scopes):
        raise OAuthError("invalid_scope", "malformed scope")
    return scopes


def _is_loopback_redirect(uri: str) -> bool:
    """Whether uri is an http loopback redirect of a native app (RFC 8252 §7.3), any port."""
    try:
        url = urlsplit(uri)
        url.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    return url.scheme == "http" and url.hostname in LOOPBACK_HOSTS and not url.fragment


def _redirect(uri: str, parameters: dict[str, str]) -> _Reply:
    """302 to uri with parameters added to its query (RFC 6749 §4.1.2)."""
    separator = "&" if urlsplit(uri).query else ("" if uri.endswith("?") else "?")
    location = f"{uri}{separator}{urlencode(parameters)}"
    return _Reply(302, b"", headers=(("Location", location),))


def _json(status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    """A JSON reply."""
    return _Reply(status, json.dumps(body).encode(), "application/json", headers)
