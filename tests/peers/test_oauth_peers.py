"""The peers as an OAuth2 mail provider: the authorization server, and bearer logins."""

from __future__ import annotations

import base64
import hashlib
import http.client
import imaplib
import json
import secrets
import smtplib
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import closing
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.peers.mailpeers import MailAccount, MailPeers
from tests.peers.oauthserver import DEVICE_GRANT, AuthorizationServer

pytestmark = pytest.mark.peers

REDIRECT_URI = "http://127.0.0.1:8400/"
# What Dovecot 2.3 sends as the SASL challenge before it fails an XOAUTH2 login.
XOAUTH2_FAILURE = {"status": "401", "schemes": "bearer", "scope": "mail"}


def xoauth2(address: str, token: str) -> str:
    """The XOAUTH2 initial response (Google's and Microsoft's format)."""
    return f"user={address}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(address: str, token: str, port: int) -> str:
    """The OAUTHBEARER initial response (RFC 7628 §3.1)."""
    return f"n,a={address},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01"


def sasl(initial: str, challenges: list[bytes]) -> Callable[..., str]:
    """An smtplib auth object: the initial response, then an empty answer to an error challenge."""

    def respond(challenge: bytes | None = None) -> str:
        if challenge is None:
            return initial
        challenges.append(challenge)
        # RFC 7628 §3.2.3: the client answers the server's error JSON to end the exchange.
        return ""

    return respond


def submission(peers: MailPeers) -> smtplib.SMTP:
    """A connection to the STARTTLS submission port, after STARTTLS."""
    smtp = smtplib.SMTP(peers.host, peers.submission_port, timeout=10)
    try:
        smtp.starttls(context=ssl.create_default_context(cafile=str(peers.ca_file)))
        smtp.ehlo()
    except BaseException:
        smtp.close()
        raise
    return smtp


def message(sender: MailAccount, recipient: MailAccount) -> EmailMessage:
    """A small message with a unique subject."""
    mail = EmailMessage()
    mail["From"], mail["To"] = sender.address, recipient.address
    mail["Subject"] = f"oauth {uuid.uuid4()}"
    mail.set_content("sent with a bearer token\n")
    return mail


def refused_login(peers: MailPeers, initial: str) -> tuple[int, str, list[bytes]]:
    """(code, text, challenges) of an XOAUTH2 login that is expected to fail."""
    challenges: list[bytes] = []
    with submission(peers) as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtp.auth("XOAUTH2", sasl(initial, challenges))
    code, error = refused.value.smtp_code, refused.value.smtp_error
    text = error.decode() if isinstance(error, bytes) else error
    print(f"challenges={challenges!r} reply={code} {text}")
    return code, text, challenges


def post(url: str, form: dict[str, str], basic: tuple[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a form POST, error statuses included."""
    request = urllib.request.Request(url, urlencode(form).encode())  # noqa: S310 (loopback http)
    if basic is not None:
        credentials = base64.b64encode(":".join(basic).encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback http)
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with closing(error):
            return error.code, json.load(error)


def authorize(server: AuthorizationServer, **parameters: str) -> dict[str, str]:
    """The query of the redirect the authorization endpoint answers with."""
    url = urlsplit(server.authorize_url)
    connection = http.client.HTTPConnection(url.netloc, timeout=10)
    try:
        connection.request("GET", f"{url.path}?{urlencode(parameters)}")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 302
    location = response.getheader("Location", "")
    assert location.startswith(parameters["redirect_uri"])
    return dict(parse_qsl(urlsplit(location).query))


def pkce() -> tuple[str, str]:
    """(verifier, S256 challenge) per RFC 7636 §4.1, §4.2."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def code_for(server: AuthorizationServer, challenge: str) -> str:
    """An authorization code for the confidential client, for the signed-in user."""
    answer = authorize(
        server,
        client_id=server.client_id,
        response_type="code",
        redirect_uri=REDIRECT_URI,
        scope="mail offline_access",
        state="s1",
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    assert answer["state"] == "s1"
    return answer["code"]


def exchange(server: AuthorizationServer, code: str, verifier: str) -> tuple[int, Any]:
    """Trade a code for tokens as the confidential client, secret in the body."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
        "client_id": server.client_id,
        "client_secret": server.client_secret,
    }
    return post(server.token_url, form)


def test_xoauth2_over_starttls_submission_delivers_to_the_inbox(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    access, _ = oauth_server.issue_tokens(alice.address)
    before = len(mail_peers.mailbox_messages(bob))
    mail = message(alice, bob)
    with submission(mail_peers) as smtp:
        assert {"XOAUTH2", "OAUTHBEARER"} <= set(smtp.esmtp_features["auth"].split())
        code, _ = smtp.auth("XOAUTH2", sasl(xoauth2(alice.address, access), []))
        smtp.send_message(mail)
    assert code == 235
    found = mail_peers.wait_for_messages(bob, before + 1)
    assert any(f"Subject: {mail['Subject']}".encode() in raw for raw in found)


def test_expired_token_gets_a_json_challenge_then_535(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice = mail_peers.accounts["alice"]
    access, _ = oauth_server.issue_tokens(alice.address)
    oauth_server.expire_access_tokens(alice.address)
    code, text, challenges = refused_login(mail_peers, xoauth2(alice.address, access))
    assert [json.loads(challenge) for challenge in challenges] == [XOAUTH2_FAILURE]
    assert (code, text) == (535, "5.7.8 Error: authentication failed: (reason unavailable)")


def test_revoked_token_gets_535(mail_peers: MailPeers, oauth_server: AuthorizationServer) -> None:
    alice = mail_peers.accounts["alice"]
    access, refresh = oauth_server.issue_tokens(alice.address)
    oauth_server.revoke(alice.address)
    code, _, _ = refused_login(mail_peers, xoauth2(alice.address, access))
    assert code == 535
    form = {"grant_type": "refresh_token", "refresh_token": refresh}
    status, body = post(
        oauth_server.token_url, form, (oauth_server.client_id, oauth_server.client_secret)
    )
    assert (status, body["error"]) == (400, "invalid_grant")


def test_alices_token_with_bobs_name_is_refused(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    access, _ = oauth_server.issue_tokens(alice.address)
    code, _, _ = refused_login(mail_peers, xoauth2(bob.address, access))
    assert code == 535


def test_oauthbearer_over_smtp_delivers(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    access, _ = oauth_server.issue_tokens(alice.address)
    before = len(mail_peers.mailbox_messages(dave))
    initial = oauthbearer(alice.address, access, mail_peers.submission_port)
    with submission(mail_peers) as smtp:
        code, _ = smtp.auth("OAUTHBEARER", sasl(initial, []))
        smtp.send_message(message(alice, dave))
    assert code == 235
    mail_peers.wait_for_messages(dave, before + 1)


def test_imap_xoauth2_login_then_append_to_sent(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    dave = mail_peers.accounts["dave"]
    access, _ = oauth_server.issue_tokens(dave.address)
    before = len(mail_peers.mailbox_messages(dave, "Sent"))
    context = ssl.create_default_context(cafile=str(mail_peers.ca_file))
    host, port = mail_peers.host, mail_peers.imaps_port
    with imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=10) as client:
        status, _ = client.authenticate("XOAUTH2", lambda _: xoauth2(dave.address, access).encode())
        assert status == "OK"
        status, _ = client.append("Sent", "(\\Seen)", None, message(dave, dave).as_bytes())
        assert status == "OK"
    assert len(mail_peers.mailbox_messages(dave, "Sent")) == before + 1


def test_password_logins_never_reach_the_introspection_endpoint(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice = mail_peers.accounts["alice"]
    with submission(mail_peers) as smtp:
        smtp.login(alice.address, alice.password)
    with submission(mail_peers) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login(alice.address, "not-the-password")
    assert oauth_server.introspection_requests == []


def test_refresh_token_is_no_bearer_token(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice = mail_peers.accounts["alice"]
    _, refresh = oauth_server.issue_tokens(alice.address)
    code, _, _ = refused_login(mail_peers, xoauth2(alice.address, refresh))
    assert code == 535
    [introspection] = oauth_server.introspection_requests
    assert introspection["client_id"] == oauth_server.resource_client_id


def test_authorization_code_with_pkce_gives_tokens_that_log_in(
    mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice = mail_peers.accounts["alice"]
    verifier, challenge = pkce()
    status, tokens = exchange(oauth_server, code_for(oauth_server, challenge), verifier)
    assert status == 200
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == "mail offline_access"
    assert oauth_server.token_requests[-1]["code_verifier"] == verifier
    with submission(mail_peers) as smtp:
        code, _ = smtp.auth("XOAUTH2", sasl(xoauth2(alice.address, tokens["access_token"]), []))
    assert code == 235


def test_token_endpoint_refuses_a_wrong_pkce_verifier(oauth_server: AuthorizationServer) -> None:
    _, challenge = pkce()
    status, body = exchange(oauth_server, code_for(oauth_server, challenge), pkce()[0])
    assert (status, body["error"]) == (400, "invalid_grant")


def test_authorization_code_works_only_once(oauth_server: AuthorizationServer) -> None:
    verifier, challenge = pkce()
    code = code_for(oauth_server, challenge)
    assert exchange(oauth_server, code, verifier)[0] == 200
    status, body = exchange(oauth_server, code, verifier)
    assert (status, body["error"]) == (400, "invalid_grant")


def test_denied_sign_in_redirects_with_access_denied_and_the_state(
    oauth_server: AuthorizationServer,
) -> None:
    oauth_server.deny_next_authorization = True
    answer = authorize(
        oauth_server,
        client_id=oauth_server.public_client_id,
        response_type="code",
        redirect_uri="http://localhost:5000/cb",
        state="xyz",
        code_challenge=pkce()[1],
        code_challenge_method="S256",
    )
    assert (answer["error"], answer["state"]) == ("access_denied", "xyz")
    assert "code" not in answer


def test_device_flow_is_pending_until_approved_then_gives_tokens(
    oauth_server: AuthorizationServer,
) -> None:
    oauth_server.device_interval = 0
    client = {"client_id": oauth_server.public_client_id}
    status, device = post(oauth_server.device_url, client | {"scope": "mail offline_access"})
    assert status == 200 and device["interval"] == 0
    poll = client | {"grant_type": DEVICE_GRANT, "device_code": device["device_code"]}
    status, body = post(oauth_server.token_url, poll)
    assert (status, body["error"]) == (400, "authorization_pending")
    oauth_server.approve_device(device["user_code"], "dave@example.net")
    status, tokens = post(oauth_server.token_url, poll)
    assert status == 200 and {"access_token", "refresh_token"} <= tokens.keys()


def test_device_polled_faster_than_the_interval_gets_slow_down(
    oauth_server: AuthorizationServer,
) -> None:
    client = {"client_id": oauth_server.public_client_id}
    _, device = post(oauth_server.device_url, client)
    assert device["interval"] == 1
    poll = client | {"grant_type": DEVICE_GRANT, "device_code": device["device_code"]}
    status, body = post(oauth_server.token_url, poll)
    assert (status, body["error"]) == (400, "slow_down")


def test_denied_device_gets_access_denied(oauth_server: AuthorizationServer) -> None:
    oauth_server.device_interval = 0
    client = {"client_id": oauth_server.public_client_id}
    _, device = post(oauth_server.device_url, client)
    oauth_server.deny_device(device["user_code"])
    poll = client | {"grant_type": DEVICE_GRANT, "device_code": device["device_code"]}
    assert post(oauth_server.token_url, poll)[1]["error"] == "access_denied"


def test_rotated_refresh_token_invalidates_the_old_one(oauth_server: AuthorizationServer) -> None:
    oauth_server.rotate_refresh_tokens = True
    _, old = oauth_server.issue_tokens("alice@example.org")
    basic = (oauth_server.client_id, oauth_server.client_secret)
    status, tokens = post(
        oauth_server.token_url, {"grant_type": "refresh_token", "refresh_token": old}, basic
    )
    assert status == 200 and tokens["refresh_token"] != old
    status, body = post(
        oauth_server.token_url, {"grant_type": "refresh_token", "refresh_token": old}, basic
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    new = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    assert post(oauth_server.token_url, new, basic)[0] == 200
    assert oauth_server.refresh_count("alice@example.org") == 2


def test_refresh_without_rotation_keeps_the_refresh_token(
    oauth_server: AuthorizationServer,
) -> None:
    _, refresh = oauth_server.issue_tokens("bob@example.org")
    form = {"grant_type": "refresh_token", "refresh_token": refresh}
    basic = (oauth_server.client_id, oauth_server.client_secret)
    status, tokens = post(oauth_server.token_url, form, basic)
    assert status == 200 and "refresh_token" not in tokens
    assert post(oauth_server.token_url, form, basic)[0] == 200


def test_confidential_client_without_its_secret_gets_401_invalid_client(
    oauth_server: AuthorizationServer,
) -> None:
    _, refresh = oauth_server.issue_tokens("alice@example.org")
    form = {"grant_type": "refresh_token", "refresh_token": refresh}
    status, body = post(oauth_server.token_url, form | {"client_id": oauth_server.client_id})
    assert (status, body["error"]) == (401, "invalid_client")


def test_fail_next_answers_503_then_serves_again(oauth_server: AuthorizationServer) -> None:
    _, refresh = oauth_server.issue_tokens("alice@example.org")
    oauth_server.fail_next(1)
    form = {"grant_type": "refresh_token", "refresh_token": refresh}
    basic = (oauth_server.client_id, oauth_server.client_secret)
    request = urllib.request.Request(oauth_server.token_url, urlencode(form).encode())  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 (loopback http)
    with closing(failed.value):
        assert failed.value.code == 503
    assert post(oauth_server.token_url, form, basic)[0] == 200
    assert len(oauth_server.token_requests) == 2
