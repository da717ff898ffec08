"""An OAuth2 authorization server on loopback, standing in for a mail provider's."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

from tests.peers.oauthapps import JWT_BEARER_GRANT, OrganisationGrants
from tests.peers.oauthtokens import (
    DEFAULT_SCOPES,
    DEVICE_GRANT,
    MAIL_SCOPE,
    NO_STORE,
    Basic,
    Code,
    Form,
    Grant,
    OAuthClient,
    OAuthError,
    Reply,
    TokenEndpoints,
    _json,
    requested_scopes,
    required,
)

__all__ = [
    "DEFAULT_SCOPES",
    "DEVICE_GRANT",
    "MAIL_SCOPE",
    "AuthorizationServer",
    "Basic",
    "Form",
    "OAuthClient",
    "OAuthError",
]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
CODE_LIFETIME = 600  # RFC 6749 §4.1.2: ten minutes at most is recommended
MAX_BODY = 65536
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CODE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # RFC 7636 §4.2: base64url of SHA-256


class AuthorizationServer(OrganisationGrants, TokenEndpoints):
    """OAuth2 server (RFC 6749, 7636 PKCE, 8628 device flow, 7662 introspection) in a thread."""

    _httpd: _HTTPServer | None = None
    _thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"AuthorizationServer(port={self._httpd.server_port if self._httpd else None})"

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
    def app_introspect_url(self) -> str:
        """The introspection endpoint for app tokens (Dovecot's second oauth2 passdb)."""
        return f"{self.base_url}/introspect/app"

    def reset(self) -> None:
        """Forget every code, token and registration, and set each knob back to its default."""
        super().reset()
        with self._lock:
            self._reset_organisation()

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
        grant = Grant(username, client_id or self.client_id, tuple(scopes))
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

    def handle(self, method: str, path: str, form: Form, basic: Basic) -> Reply:
        """Answer one request; called by the HTTP handler threads."""
        routes: dict[tuple[str, str], Callable[[Form, Basic], Reply]] = {
            ("GET", "/authorize"): self._authorize,
            ("GET", "/device"): self._verify_device,
            ("POST", "/token"): self._token,
            ("POST", "/devicecode"): self._device_authorization,
            ("POST", "/introspect"): self._introspect,
            ("POST", "/introspect/app"): self._introspect_app,
        }
        route = routes.get((method, path))
        if route is None:
            allowed = ", ".join(m for m, p in routes if p == path)
            if allowed:
                return Reply(405, b"method not allowed\n", headers=(("Allow", allowed),))
            return Reply(404, b"no such endpoint\n")
        with self._lock:
            try:
                return route(form, basic)
            except OAuthError as error:
                return error.reply()

    def _token(self, form: Form, basic: Basic) -> Reply:
        """The token endpoint, with the organisation grants (client credentials, RFC 7523)."""
        grant_type = form.get("grant_type")
        if grant_type not in ("client_credentials", JWT_BEARER_GRANT):
            return super()._token(form, basic)
        self._token_requests.append(dict(form))
        if self._failures:
            return Reply(self._failures.pop(0), b"<html>Service unavailable</html>", "text/html")
        if grant_type == "client_credentials":
            return _json(200, self._client_credentials_grant(form, basic), NO_STORE)
        subject, client_id, scopes = self._jwt_bearer_grant(form)
        grant = Grant(subject, client_id, scopes)
        return _json(200, self._issue(grant, scopes, refresh=False), NO_STORE)

    def _introspect_app(self, form: Form, basic: Basic) -> Reply:
        """RFC 7662 §2.2 for app tokens only (user tokens are inactive here)."""
        client_id, secret = basic if basic is not None else (form.get("client_id"), None)
        secret = secret if basic is not None else form.get("client_secret")
        if client_id != self.resource_client_id or not secrets.compare_digest(
            secret or "", self.resource_client_secret
        ):
            raise OAuthError(
                "invalid_client", "introspection needs the resource's credentials", 401
            )
        self._app_introspections.append(dict(form))
        return _json(200, self._introspect_app_token(required(form, "token")), NO_STORE)

    def _authorize(self, query: Form, _: Basic) -> Reply:
        """RFC 6749 §4.1.1: sign in as signed_in_as and redirect with a code, PKCE required."""
        client = self._clients.get(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        # §4.1.2.1: without a known client and a valid redirect URI the user sees the error.
        if client is None:
            return Reply(400, b"unknown client_id\n")
        if not _is_loopback_redirect(redirect_uri):
            return Reply(400, b"redirect_uri must be http://127.0.0.1:PORT/ or localhost\n")
        answer = {"state": query["state"]} if "state" in query else {}
        try:
            if query.get("response_type") != "code":
                kind = (
                    "invalid_request"
                    if "response_type" not in query
                    else "unsupported_response_type"
                )
                raise OAuthError(kind, "response_type must be code")
            challenge = required(query, "code_challenge")
            if query.get("code_challenge_method") != "S256":
                raise OAuthError("invalid_request", "code_challenge_method must be S256")
            if not CODE_CHALLENGE.fullmatch(challenge):
                raise OAuthError("invalid_request", "code_challenge is not base64url of SHA-256")
            scopes = requested_scopes(query.get("scope"))
            denied, self.deny_next_authorization = self.deny_next_authorization, False
            user = self.signed_in_as
            if denied or user is None:
                raise OAuthError("access_denied", "the user did not allow access")
        except OAuthError as error:
            answer |= {"error": error.error, "error_description": error.description}
            return _redirect(redirect_uri, answer)
        code = secrets.token_urlsafe(32)
        grant = Grant(user, client.client_id, scopes)
        self._codes[code] = Code(grant, redirect_uri, challenge, time.time() + CODE_LIFETIME)
        return _redirect(redirect_uri, {"code": code} | answer)

    def _verify_device(self, query: Form, _: Basic) -> Reply:
        """The verification page: with ?user_code=, signed_in_as approves (or denies) it."""
        if "user_code" not in query:
            return Reply(200, b"Enter the code shown on your device.\n")
        try:
            device = self._device_by_user_code(query["user_code"])
        except KeyError:
            return Reply(400, b"unknown code\n")
        denied, self.deny_next_authorization = self.deny_next_authorization, False
        user = self.signed_in_as
        if denied or user is None:
            device.denied = True
            return Reply(200, b"Access denied.\n")
        device.username = user
        return Reply(200, b"Device approved; you may close this window.\n")


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
            self._write(Reply(411, b"send a Content-Length\n"))
            self.close_connection = True
            return
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self._write(Reply(413 if length.isdigit() else 400, b"bad Content-Length\n"))
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
            reply = Reply(500, b"internal error\n")
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

    def _write(self, reply: Reply) -> None:
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


def _is_loopback_redirect(uri: str) -> bool:
    """Whether uri is an http loopback redirect of a native app (RFC 8252 §7.3), any port."""
    try:
        url = urlsplit(uri)
        url.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    return url.scheme == "http" and url.hostname in LOOPBACK_HOSTS and not url.fragment


def _redirect(uri: str, parameters: dict[str, str]) -> Reply:
    """302 to uri with parameters added to its query (RFC 6749 §4.1.2)."""
    separator = "&" if urlsplit(uri).query else ("" if uri.endswith("?") else "?")
    location = f"{uri}{separator}{urlencode(parameters)}"
    return Reply(302, b"", headers=(("Location", location),))
