"""The peers as an organisation's provider: app tokens and service-account tokens log in."""

from __future__ import annotations

import base64
import imaplib
import json
import ssl
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.peers.mailpeers import MailPeers
from tests.peers.oauthapps import JWT_BEARER_GRANT
from tests.peers.oauthserver import AuthorizationServer
from tests.peers.test_oauth_peers import message, post, refused_login, sasl, submission, xoauth2

pytestmark = pytest.mark.peers

RESOURCE = "https://outlook.office365.com/.default"


def app_token(server: AuthorizationServer, client_id: str, secret: str) -> tuple[int, Any]:
    """(status, body) of a client credentials grant, secret in the body as Microsoft takes it."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "scope": RESOURCE,
    }
    return post(server.token_url, form)


def assertion(key: dict[str, str], subject: str, scope: str = "mail", **claims: Any) -> str:
    """An RS256 JWT bearer assertion (RFC 7523 §3) signed with the service account's key."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    body: dict[str, Any] = {"iss": key["client_email"], "sub": subject, "scope": scope}
    body["aud"] = key["token_uri"]
    body |= {"iat": now, "exp": now + 3600, **claims}
    signing_input = f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(body)}"
    private = load_pem_private_key(key["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_one_app_token_logs_in_over_smtp_as_two_mailboxes_of_its_domain(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice, bob, dave = (mail_peers.accounts[n] for n in ("alice", "bob", "dave"))
    status, body = app_token(oauth_server, *oauth_server.register_app("example.org"))
    assert status == 200 and "refresh_token" not in body
    before = len(mail_peers.mailbox_messages(dave))
    for account in (alice, bob):
        with submission(mail_peers) as smtp:
            code, _ = smtp.auth("XOAUTH2", sasl(xoauth2(account.address, body["access_token"]), []))
            smtp.send_message(message(account, dave))
        assert code == 235
    mail_peers.wait_for_messages(dave, before + 2)


def test_an_app_token_is_refused_for_a_mailbox_outside_its_domain(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    _, body = app_token(oauth_server, *oauth_server.register_app("example.org"))
    code, _, _ = refused_login(mail_peers, xoauth2("dave@example.net", body["access_token"]))
    assert code == 535


def test_an_app_token_opens_imap_and_appends_to_sent(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    bob = mail_peers.accounts["bob"]
    _, body = app_token(oauth_server, *oauth_server.register_app("example.org"))
    before = len(mail_peers.mailbox_messages(bob, "Sent"))
    context = ssl.create_default_context(cafile=str(mail_peers.ca_file))
    with imaplib.IMAP4_SSL(
        mail_peers.host, mail_peers.imaps_port, ssl_context=context, timeout=10
    ) as client:
        initial = xoauth2(bob.address, body["access_token"]).encode()
        assert client.authenticate("XOAUTH2", lambda _: initial)[0] == "OK"
        assert client.append("Sent", "(\\Seen)", None, message(bob, bob).as_bytes())[0] == "OK"
    assert len(mail_peers.mailbox_messages(bob, "Sent")) == before + 1


def test_a_revoked_app_secret_gets_401_invalid_client(oauth_server: AuthorizationServer) -> None:
    client_id, secret = oauth_server.register_app("example.org")
    oauth_server.new_app_secret(client_id)
    status, body = app_token(oauth_server, client_id, secret)
    assert (status, body["error"]) == (401, "invalid_client")
    assert "AADSTS7000215" in body["error_description"]


def test_client_credentials_need_a_dot_default_scope(oauth_server: AuthorizationServer) -> None:
    client_id, secret = oauth_server.register_app("example.org")
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    status, body = post(oauth_server.token_url, form | {"scope": "mail"})
    assert (status, body["error"]) == (400, "invalid_scope")


def test_a_service_account_assertion_gets_a_token_for_its_subject_that_logs_in(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    carol = mail_peers.accounts["carol"]
    key = oauth_server.register_service_account("example.net", ("mail",))
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion(key, carol.address)}
    status, body = post(oauth_server.token_url, form)
    assert status == 200 and "refresh_token" not in body
    with submission(mail_peers) as smtp:
        code, _ = smtp.auth("XOAUTH2", sasl(xoauth2(carol.address, body["access_token"]), []))
    assert code == 235
    # The token is carol's: the strict passdb refuses it for dave of the same domain.
    dave = mail_peers.accounts["dave"]
    assert refused_login(mail_peers, xoauth2(dave.address, body["access_token"]))[0] == 535


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"aud": "https://elsewhere.test/token"}, "invalid_grant"),
        ({"exp": int(time.time()) - 10}, "invalid_grant"),
        ({"sub": "someone@example.com"}, "invalid_grant"),
        ({"scope": "mail https://www.googleapis.com/auth/drive"}, "unauthorized_client"),
    ],
)
def test_an_assertion_the_server_must_not_honour_is_refused(
    oauth_server: AuthorizationServer, change: dict[str, Any], error: str
) -> None:
    key = oauth_server.register_service_account("example.net", ("mail",))
    claims = dict(change)
    subject = str(claims.pop("sub", "carol@example.net"))
    scope = str(claims.pop("scope", "mail"))
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion(key, subject, scope, **claims)}
    status, body = post(oauth_server.token_url, form)
    assert (status, body["error"]) == (400, error)


def test_an_assertion_signed_with_another_key_is_refused(oauth_server: AuthorizationServer) -> None:
    key = oauth_server.register_service_account("example.net", ("mail",))
    other = oauth_server.register_service_account("example.net", ("mail",))
    forged = assertion({**other, "client_email": key["client_email"]}, "carol@example.net")
    status, body = post(
        oauth_server.token_url, {"grant_type": JWT_BEARER_GRANT, "assertion": forged}
    )
    assert (status, body["error"], body["error_description"]) == (
        400,
        "invalid_grant",
        "Invalid JWT Signature.",
    )
