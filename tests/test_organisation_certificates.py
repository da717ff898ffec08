"""Certificate credentials for Microsoft app-only, held refusals, Send As config: no peers."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.config.appcertificate import read_app_certificate
from relay.config.load import load_config, parse_config, render_config
from relay.config.model import ProviderConfig, RelayConfig
from relay.errors import OAuthError, TemporaryFailure
from relay.model import User
from relay.oauth.assertion import client_assertion
from relay.oauth.organisation import OrganisationTokens
from relay.oauth.orgstatus import HOLD_SECONDS, failing_lines, write_failing
from relay.providers.presets import SentCopyMailbox
from relay.upstream.sendas import copy_mailbox
from tests.peers.oauthapps import pem_files, self_signed_certificate
from tests.test_config import assert_problem, write
from tests.test_organisation import GUID, CountingEndpoint, microsoft, secret, settings

TENANT = f"      app_only: true\n      tenant: {GUID}\n"


def certificate_config(tmp_path: Path, certificate: str, key: str, extra: str = "") -> Path:
    return microsoft(
        tmp_path,
        TENANT + f"      client_certificate_file: {certificate}\n      client_key_file: {key}\n",
        extra,
    )


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- Config: what an admin writes, and the errors that name the key path and the file ---


def test_a_certificate_and_its_key_stand_in_for_the_client_secret(tmp_path: Path) -> None:
    paths = pem_files(tmp_path, *self_signed_certificate(365))
    config = load_config(certificate_config(tmp_path, *paths))
    oauth2 = config.providers["work"].oauth2
    assert oauth2 is not None and oauth2.client_secret_file is None
    assert (str(oauth2.client_certificate_file), str(oauth2.client_key_file)) == paths
    rendered = yaml_round_trip(config)
    assert rendered == config


def yaml_round_trip(config: RelayConfig) -> RelayConfig:
    rendered = yaml.safe_load(render_config(config))
    return parse_config(rendered, str(config.source), Path("/elsewhere"))


def test_a_certificate_file_that_is_not_pem_names_the_key_and_the_file(tmp_path: Path) -> None:
    _, key = pem_files(tmp_path, *self_signed_certificate(365))
    der = tmp_path / "app.cer"
    der.write_bytes(b"\x30\x82\x01\x0a not pem at all")
    path = certificate_config(tmp_path, str(der), key)
    assert_problem(path, "providers.work.oauth2.client_certificate_file", str(der), "not a PEM")


def test_a_key_of_another_certificate_names_the_key_file(tmp_path: Path) -> None:
    certificate, _ = pem_files(tmp_path, *self_signed_certificate(365), stem="one")
    _, other_key = pem_files(tmp_path, *self_signed_certificate(365), stem="two")
    path = certificate_config(tmp_path, certificate, other_key)
    assert_problem(
        path, "providers.work.oauth2.client_key_file", other_key, "does not belong", certificate
    )
    key_text = Path(other_key).read_text().splitlines()[1]
    with pytest.raises(Exception) as error:
        load_config(path)
    assert key_text not in str(error.value)


def test_an_expired_certificate_names_the_file_and_when_it_expired(tmp_path: Path) -> None:
    certificate, key = pem_files(tmp_path, *self_signed_certificate(-2, start_days_ago=30))
    path = certificate_config(tmp_path, certificate, key)
    assert_problem(path, "providers.work.oauth2.client_certificate_file", certificate, "expired on")


def test_a_secret_and_a_certificate_together_name_the_conflict(tmp_path: Path) -> None:
    certificate, key = pem_files(tmp_path, *self_signed_certificate(365))
    extra = f"      client_secret_file: {secret(tmp_path)}\n"
    path = microsoft(
        tmp_path,
        TENANT + extra + f"      client_certificate_file: {certificate}\n"
        f"      client_key_file: {key}\n",
    )
    assert_problem(path, "providers.work.oauth2.client_secret_file", "choose one")


def test_a_certificate_without_its_key_names_the_missing_key(tmp_path: Path) -> None:
    certificate, _ = pem_files(tmp_path, *self_signed_certificate(365))
    path = microsoft(tmp_path, TENANT + f"      client_certificate_file: {certificate}\n")
    assert_problem(path, "providers.work.oauth2.client_key_file", "required with")


# --- The client assertion (RFC 7523 §2.2, as Microsoft Entra takes it) ---


def test_the_client_assertion_is_ps256_names_the_certificate_and_verifies_with_its_key(
    tmp_path: Path,
) -> None:
    made, key = self_signed_certificate(365)
    certificate = read_app_certificate(*map(Path, pem_files(tmp_path, made, key)))
    token_url = f"https://login.microsoftonline.com/{GUID}/oauth2/v2.0/token"
    assertion = client_assertion(certificate, "app-id", token_url, 1_700_000_000.0).reveal()
    head, body, signature = assertion.split(".")
    header, claims = json.loads(unb64(head)), json.loads(unb64(body))
    der = made.public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert header == {"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint}
    assert (claims["aud"], claims["iss"], claims["sub"]) == (token_url, "app-id", "app-id")
    assert claims["nbf"] == claims["iat"] == 1_700_000_000
    assert claims["exp"] - claims["nbf"] == 600 and claims["jti"]
    public = made.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    public.verify(unb64(signature), f"{head}.{body}".encode(), pss, hashes.SHA256())
    again = client_assertion(certificate, "app-id", token_url, 1_700_000_000.0).reveal()
    assert json.loads(unb64(again.split(".")[1]))["jti"] != claims["jti"]  # never replayed


# --- A refused credential: asked once, not per mail; asked again once a file changes ---


async def test_a_refused_secret_is_asked_once_for_many_mails_and_again_once_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    endpoint = CountingEndpoint()
    endpoint.refuse = OAuthError("invalid_client", "AADSTS7000215: Invalid client secret.")
    published: list[dict[str, str]] = []
    tokens = OrganisationTokens(
        lambda: endpoint,  # type: ignore[arg-type, return-value]  # a stand-in endpoint
        clock=lambda: now[0],
        on_change=published.append,
    )
    app = settings(tmp_path)
    caplog.set_level(logging.INFO, "relay.oauth.organisation")
    for mailbox in ("alice@example.org", "bob@example.org", "carol@example.org"):
        with pytest.raises(TemporaryFailure):
            await tokens.bearer("work", app, mailbox)
    assert tokens.requests == 1  # the app's refusal holds for every mailbox of the provider
    assert caplog.text.count("oauth.organisation_failed") == 1
    assert list(published[-1]) == ["work"] and "Certificates & secrets" in published[-1]["work"]
    endpoint.refuse = None  # fixed at the provider, but relay's file still has the old secret
    with pytest.raises(TemporaryFailure):
        await tokens.bearer("work", app, "alice@example.org")
    assert tokens.requests == 1
    assert app.client_secret_file is not None
    app.client_secret_file.write_text("the-new-secret-value\n")  # the admin replaces the file
    await tokens.bearer("work", app, "alice@example.org")
    assert tokens.requests == 2 and tokens.failing == {} and published[-1] == {}


async def test_a_held_refusal_is_asked_again_after_the_hold_on_the_injected_clock(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    endpoint = CountingEndpoint()
    endpoint.refuse = OAuthError("unauthorized_client", "AADSTS700016: not found")
    tokens = OrganisationTokens(lambda: endpoint, clock=lambda: now[0])  # type: ignore[arg-type, return-value]
    app = settings(tmp_path)
    for _ in range(2):
        with pytest.raises(TemporaryFailure):
            await tokens.bearer("work", app, "alice@example.org")
    assert tokens.requests == 1
    now[0] += HOLD_SECONDS
    endpoint.refuse = None  # consent granted again meanwhile
    await tokens.bearer("work", app, "alice@example.org")
    assert tokens.requests == 2


def test_relay_status_lists_only_the_running_daemons_failing_credentials(tmp_path: Path) -> None:
    write_failing(tmp_path, {"work": "the app's client secret was refused: create a new one"})
    lines = failing_lines(tmp_path, os.getpid())
    assert lines[1].startswith("ORGANISATION CREDENTIAL FAILING")
    assert lines[2] == "work: the app's client secret was refused: create a new one"
    assert failing_lines(tmp_path, os.getpid() + 1) == []  # another (an old) daemon's
    assert (tmp_path / "organisation.json").stat().st_mode & 0o777 == 0o600


# --- Send As: the config, and whose mailbox a mail is filed in ---


def test_sent_copy_mailbox_sender_on_self_filing_exchange_points_at_message_copy_setting(
    tmp_path: Path,
) -> None:
    path = microsoft(
        tmp_path,
        TENANT + f"      client_secret_file: {secret(tmp_path)}\n",
        "    sent_copy_mailbox: sender\n",
    )
    assert_problem(
        path, "providers.work.sent_copy_mailbox", "MessageCopyForSentAsEnabled", "no effect"
    )


def test_sent_copy_mailbox_sender_with_a_password_needs_an_organisation_credential(
    tmp_path: Path,
) -> None:
    text = (
        "providers:\n  lab:\n    smtp: {host: mail.test, port: 587, tls: starttls}\n"
        "    imap: {host: mail.test, port: 993, tls: implicit}\n    sent_copy_mailbox: sender\n"
    )
    assert_problem(write(tmp_path, text), "providers.lab.sent_copy_mailbox", "organisation")


def test_the_copy_goes_to_the_shared_from_only_when_configured_and_only_if_it_is_the_users(
    tmp_path: Path,
) -> None:
    path = microsoft(tmp_path, TENANT + f"      client_secret_file: {secret(tmp_path)}\n")
    provider = load_config(path).providers["work"]
    user = User(
        login="alice",
        provider="work",
        email="alice@example.org",
        upstream_user="alice@example.org",
        local_hash="",
        sealed_secret=None,
        aliases=("sales@example.org",),
    )
    shared = b"From: Sales <SALES@example.org>\r\nTo: x@example.net\r\n"
    assert copy_mailbox(user, provider, shared) == "alice@example.org"
    sender = replace_mailbox(provider)
    assert copy_mailbox(user, sender, shared) == "sales@example.org"
    foreign = b"From: boss@example.org\r\n"
    assert copy_mailbox(user, sender, foreign) == "alice@example.org"


def replace_mailbox(provider: ProviderConfig) -> ProviderConfig:
    return replace(provider, sent_copy_mailbox=SentCopyMailbox.SENDER)
