"""Organisation-wide sign-in without peers: its config, assertions, token cache, Graph mapping."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.config.load import load_config, parse_config, render_config
from relay.config.model import OAuthSettings
from relay.config.serviceaccount import read_service_account
from relay.errors import (
    OAuthError,
    PermanentFailure,
    PermanentLoginRefusal,
    TemporaryFailure,
    Throttled,
)
from relay.model import OAuthClient, Secret
from relay.oauth.assertion import jwt_assertion
from relay.oauth.client import TokenGrant
from relay.oauth.organisation import OrganisationTokens
from relay.providers.presets import GRAPH_SCOPE, GRAPH_URL, Transport
from relay.sent.filing import SentCopyPlan, plan_sent_copy
from relay.upstream.graph import graph_error, graph_mime, retry_after
from tests.test_config import assert_problem, write

GUID = "8f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


def service_account_key(tmp_path: Path, **changes: Any) -> tuple[Path, rsa.RSAPrivateKey]:
    """A service-account JSON key file as Google's console writes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    document = {
        "type": "service_account",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "relay@project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
        **changes,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(document))
    return path, key


def secret(tmp_path: Path) -> Path:
    path = tmp_path / "client-secret"
    path.write_text("s3cret-value\n")
    return path


def microsoft(tmp_path: Path, oauth2: str, extra: str = "") -> Path:
    text = (
        f"providers:\n  work:\n    preset: office365\n{extra}"
        f"    oauth2:\n      client_id: 00000000-1111\n{oauth2}"
    )
    return write(tmp_path, text)


# --- Config: what an admin writes, and the errors that name the key path ---


def test_app_only_on_the_office365_preset_asks_exchange_for_its_dot_default_token(
    tmp_path: Path,
) -> None:
    path = microsoft(
        tmp_path,
        f"      app_only: true\n      tenant: {GUID}\n"
        f"      client_secret_file: {secret(tmp_path)}\n",
    )
    oauth2 = load_config(path).providers["work"].oauth2
    assert oauth2 is not None and oauth2.organisation and oauth2.app_only
    assert oauth2.token_url == f"https://login.microsoftonline.com/{GUID}/oauth2/v2.0/token"
    assert oauth2.scopes == ("https://outlook.office365.com/.default",)


def test_graph_transport_asks_for_the_graph_resource_and_files_no_sent_copy(
    tmp_path: Path,
) -> None:
    path = microsoft(
        tmp_path,
        "      app_only: true\n      tenant: contoso.onmicrosoft.com\n"
        f"      client_secret_file: {secret(tmp_path)}\n",
        extra="    transport: graph\n",
    )
    config = load_config(path)
    provider = config.providers["work"]
    assert provider.transport is Transport.GRAPH and provider.graph_url == GRAPH_URL
    assert provider.oauth2 is not None and provider.oauth2.scopes == (GRAPH_SCOPE,)
    assert plan_sent_copy(provider, None) is SentCopyPlan.SKIP
    rendered = yaml.safe_load(render_config(config))
    assert parse_config(rendered, str(config.source), Path("/elsewhere")) == config


@pytest.mark.parametrize("tenant", ["contoso", "not_a_tenant", "common"])
def test_app_only_with_a_tenant_that_is_no_guid_or_domain_names_the_key(
    tmp_path: Path, tenant: str
) -> None:
    path = microsoft(
        tmp_path,
        f"      app_only: true\n      tenant: {tenant}\n"
        f"      client_secret_file: {secret(tmp_path)}\n",
    )
    assert_problem(path, "providers.work.oauth2.tenant", "contoso.onmicrosoft.com")


def test_app_only_without_a_tenant_or_a_client_secret_names_both_keys(tmp_path: Path) -> None:
    path = microsoft(tmp_path, "      app_only: true\n")
    assert_problem(path, "providers.work.oauth2.tenant", "required for app_only")
    assert_problem(path, "providers.work.oauth2.client_secret_file", "required for app_only")


def test_graph_transport_without_an_organisation_credential_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  work:\n    preset: office365\n    transport: graph\n")
    assert_problem(path, "providers.work.transport", "organisation credential")
    path = microsoft(tmp_path, "      tenant: contoso.onmicrosoft.com\n", "    transport: graph\n")
    assert_problem(path, "providers.work.transport", "app_only")


def test_graph_url_with_the_smtp_transport_has_no_effect(tmp_path: Path) -> None:
    text = "providers:\n  work:\n    preset: office365\n    graph_url: https://graph.test/v1.0\n"
    assert_problem(write(tmp_path, text), "providers.work.graph_url", "no effect")


def test_a_service_account_on_workspace_needs_no_client_id_nor_secret(tmp_path: Path) -> None:
    key_file, _ = service_account_key(tmp_path)
    text = (
        "providers:\n  gw:\n    preset: google-workspace\n"
        f"    oauth2:\n      service_account_file: {key_file}\n"
    )
    oauth2 = load_config(write(tmp_path, text)).providers["gw"].oauth2
    assert oauth2 is not None and oauth2.service_account_file == key_file
    assert oauth2.client_id == "1234567890"  # what the Workspace admin authorizes
    assert oauth2.token_url == "https://oauth2.googleapis.com/token"
    assert oauth2.scopes == ("https://mail.google.com/",)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (json.dumps({"type": "authorized_user", "client_id": "x"}), "type is 'authorized_user'"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n", "not JSON"),
        (
            json.dumps(
                {
                    "type": "service_account",
                    "client_email": "a@b",
                    "token_uri": "https://t",
                    "private_key": "MIIEvQIBADANBg",
                }
            ),
            "not a PEM key",
        ),  # fmt: skip
    ],
)
def test_a_key_file_that_is_not_a_service_account_key_names_the_key_and_hides_the_content(
    tmp_path: Path, content: str, why: str
) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text(content)
    text = (
        "providers:\n  gw:\n    preset: google-workspace\n"
        f"    oauth2:\n      service_account_file: {key_file}\n"
    )
    path = write(tmp_path, text)
    assert_problem(
        path, "providers.gw.oauth2.service_account_file", "not a service-account key", why
    )
    with pytest.raises(Exception) as caught:
        load_config(path)
    assert "MIIEvQIBADANBg" not in str(caught.value)


def test_app_only_and_a_service_account_together_name_the_conflict(tmp_path: Path) -> None:
    key_file, _ = service_account_key(tmp_path)
    path = microsoft(
        tmp_path,
        f"      app_only: true\n      tenant: {GUID}\n      service_account_file: {key_file}\n",
    )
    assert_problem(path, "providers.work.oauth2.app_only", "choose one")


def test_a_service_account_key_never_shows_its_private_key(tmp_path: Path) -> None:
    key_file, _ = service_account_key(tmp_path)
    key = read_service_account(key_file)
    assert "PRIVATE" not in repr(key) and "PRIVATE" not in str(key)


# --- The RFC 7523 assertion ---


def test_the_assertion_is_rs256_signed_and_names_the_user_the_scope_and_the_token_endpoint(
    tmp_path: Path,
) -> None:
    key_file, private = service_account_key(tmp_path)
    key = read_service_account(key_file)
    token = jwt_assertion(key, "alice@example.org", ("https://mail.google.com/",), 1_700_000_000)
    head, body, signature = token.reveal().split(".")

    def decoded(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    private.public_key().verify(
        decoded(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert json.loads(decoded(head)) == {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    assert json.loads(decoded(body)) == {
        "iss": "relay@project.iam.gserviceaccount.com",
        "sub": "alice@example.org",
        "scope": "https://mail.google.com/",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }


# --- The token cache, with a token endpoint that counts ---


class CountingEndpoint:
    """Stands in for TokenEndpoint: hands out numbered tokens, or refuses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse: OAuthError | None = None

    async def client_credentials(self, client: OAuthClient) -> TokenGrant:
        return self._grant("client_credentials", client.client_id)

    async def jwt_bearer(self, client: OAuthClient, assertion: Secret) -> TokenGrant:
        claims = assertion.reveal().split(".")[1]
        subject = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["sub"]
        return self._grant("jwt_bearer", subject)

    def _grant(self, kind: str, who: str) -> TokenGrant:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append((kind, who))
        token = Secret(f"token-{len(self.calls)}")
        return TokenGrant(token, 10**10, 3600.0, None, ())


def settings(tmp_path: Path, account: Path | None = None) -> OAuthSettings:
    return OAuthSettings(
        client_id="app",
        client_secret_file=None if account else secret(tmp_path),
        tenant=None,
        authorize_url="",
        token_url="https://login.test/token",
        device_url=None,
        scopes=("https://outlook.office365.com/.default",),
        app_only=account is None,
        service_account_file=account,
    )


async def test_one_app_token_serves_every_mailbox_and_one_assertion_per_user(
    tmp_path: Path,
) -> None:
    endpoint = CountingEndpoint()
    tokens = OrganisationTokens(lambda: endpoint)  # type: ignore[arg-type, return-value]
    app = settings(tmp_path)
    first = await tokens.bearer("work", app, "alice@example.org")
    assert await tokens.bearer("work", app, "bob@example.org") == first
    account = settings(tmp_path, service_account_key(tmp_path)[0])
    alice = await tokens.bearer("gw", account, "alice@example.org")
    assert await tokens.bearer("gw", account, "bob@example.org") != alice
    assert await tokens.bearer("gw", account, "alice@example.org") == alice
    assert endpoint.calls == [
        ("client_credentials", "app"),
        ("jwt_bearer", "alice@example.org"),
        ("jwt_bearer", "bob@example.org"),
    ]


async def test_a_refused_credential_is_logged_once_with_the_fix_until_it_works_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = CountingEndpoint()
    endpoint.refuse = OAuthError("invalid_client", "AADSTS7000222: The client secret expired.")
    tokens = OrganisationTokens(lambda: endpoint)  # type: ignore[arg-type, return-value]
    app = settings(tmp_path)
    caplog.set_level(logging.INFO, "relay.oauth.organisation")
    for mailbox in ("alice@example.org", "bob@example.org"):
        with pytest.raises(TemporaryFailure) as failed:
            await tokens.bearer("work", app, mailbox)
    assert failed.value.code == 451 and failed.value.hint is not None
    assert "expired" in failed.value.hint and "Certificates & secrets" in failed.value.hint
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "work" in tokens.failing
    endpoint.refuse = None
    assert app.client_secret_file is not None
    app.client_secret_file.write_text("a-new-secret-value\n")  # the admin's fix
    await tokens.bearer("work", app, "alice@example.org")
    assert tokens.failing == {}
    assert "oauth.organisation_restored provider=work" in caplog.text


# --- Graph: what goes out, and what its answers become ---

MIME = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nhi\r\n"


def test_envelope_recipients_missing_from_the_header_go_to_graph_as_bcc() -> None:
    assert graph_mime(MIME, ["b@example.org"]) == MIME
    sent = graph_mime(MIME, ["B@example.org", "c@example.org"])
    assert sent == b"Bcc: c@example.org\r\n" + MIME


def test_a_header_recipient_outside_the_envelope_is_refused_rather_than_mailed() -> None:
    with pytest.raises(PermanentFailure) as refused:
        graph_mime(MIME, ["c@example.org"])
    assert refused.value.code == 554 and "b@example.org" in refused.value.text


class Answer:
    """The parts of an httpx.Response that graph_error reads."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.status_code = status
        self._body = body
        self.headers = headers
        self.reason_phrase = "Too Many Requests"
        self.text = json.dumps(body)

    def json(self) -> dict[str, Any]:
        return self._body


def throttled(retry: str) -> Answer:
    body = {"error": {"code": "ApplicationThrottled", "message": "over its limit"}}
    return Answer(429, body, {"Retry-After": retry})


def test_retry_after_seven_seconds_is_a_throttle_of_exactly_seven_seconds() -> None:
    error = graph_error(throttled("7"), now=1_700_000_000.0)  # type: ignore[arg-type]
    assert isinstance(error, Throttled) and error.retry_after == 7.0
    assert error.reply.line.startswith("451 4.4.5 Graph 429 ApplicationThrottled: over its limit")


def test_retry_after_as_an_http_date_counts_from_the_injected_clock() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert retry_after(date, now) == 7.0
    assert retry_after(date, now + 10) == 0.0
    assert retry_after("soon", now) is None
    error = graph_error(throttled(date), now)  # type: ignore[arg-type]
    assert isinstance(error, Throttled) and error.retry_after == 7.0


def test_graph_answers_map_to_relays_temporary_and_permanent_rules() -> None:
    def answer(status: int, code: str) -> Answer:
        return Answer(status, {"error": {"code": code, "message": "m"}}, {})

    cases = {
        401: PermanentLoginRefusal,  # tried again once with a fresh token, then deferred
        403: PermanentFailure,
        404: PermanentFailure,
        400: PermanentFailure,
        500: TemporaryFailure,
        503: TemporaryFailure,  # no Retry-After: the normal backoff
    }
    for status, kind in cases.items():
        error = graph_error(answer(status, "X"), 0.0)  # type: ignore[arg-type]
        assert type(error) is kind, status
        assert f"Graph {status} X: m" in error.text
    denied = graph_error(answer(403, "ErrorAccessDenied"), 0.0)  # type: ignore[arg-type]
    assert denied.reply.line.startswith("550 5.7.1") and denied.hint and "Mail.Send" in denied.hint
