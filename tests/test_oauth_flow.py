"""OAuth2 users end to end: authorize, send with XOAUTH2, renew, lose and regain the grant.

The provider is the test Postfix whose SASL is Dovecot's oauth2 passdb, checking every bearer
token at the local authorization server's introspection endpoint (tests/peers/oauthserver.py).
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import RelaySetup, relay_process, write_config
from tests.peers.mailpeers import MailPeers
from tests.peers.oauthserver import DEFAULT_SCOPES, AuthorizationServer
from tests.test_end_to_end import every_database_byte_free_of, find_by_subject, message_text

FAST = {"connect_timeout": 5, "timeout": 10}
URL = re.compile(r"^https?://\S+$", re.MULTILINE)
USER_CODE = re.compile(r"enter the code (\S+),")


def oauth_provider(peers: MailPeers, server: AuthorizationServer, root: Path) -> dict[str, Any]:
    """The test Postfix and IMAP Dovecot, logging in with tokens from the local server."""
    secret_file = root / "client-secret"
    root.mkdir(parents=True, exist_ok=True)
    secret_file.write_text(server.client_secret + "\n")
    return {
        "smtp": {"host": peers.host, "port": peers.submission_port, "tls": "starttls"},
        "imap": {"host": peers.host, "port": peers.imaps_port, "tls": "implicit"},
        "ca_file": str(peers.ca_file),
        "sent_copy": "always",
        "oauth2": {
            "client_id": server.client_id,
            "client_secret_file": str(secret_file),
            "authorize_url": server.authorize_url,
            "token_url": server.token_url,
            "device_url": server.device_url,
            "scopes": list(DEFAULT_SCOPES),
        },
    }


def oauth_setup(peers: MailPeers, server: AuthorizationServer, root: Path) -> RelaySetup:
    """relay with provider 'lab' on the peers and alice added as an OAuth2 user."""
    setup = write_config(
        root,
        {"lab": oauth_provider(peers, server, root)},
        upstream=FAST,
        logging={"level": "debug"},
    )
    alice = peers.accounts["alice"].address
    added = setup.cli("user", "add", "alice", "--provider", "lab", "--email", alice, "--oauth2")
    assert added.status == 0, added.err
    assert "relay user authorize alice" in added.err
    return setup


def edit_config(setup: RelaySetup, **sections: Any) -> None:
    """Replace top-level sections of the setup's config file."""
    document = yaml.safe_load(setup.config_path.read_text())
    setup.config_path.write_text(yaml.safe_dump({**document, **sections}))


def local_secret_of(setup: RelaySetup) -> str:
    issued = setup.cli("user", "new-secret", "alice")
    assert issued.status == 0, issued.err
    return issued.out.strip()


def authorize(setup: RelaySetup, *extra: str, approve: Any = None) -> str:
    """Run `relay user authorize alice`, signing in as a browser would; its whole output."""
    command = [sys.executable, "-m", "relay", "--config", str(setup.config_path)]
    with subprocess.Popen(
        [*command, "user", "authorize", "alice", "--wait", "20", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line)
            if approve is not None and (code := USER_CODE.search(line)):
                approve(code.group(1))
                break
            if approve is None and URL.match(line.strip()):
                follow_in_browser(line.strip())
                break
        lines.extend(process.stdout)  # up to the end of the command
        output = "".join(lines)
    assert process.wait(timeout=30) == 0, output
    return output


def follow_in_browser(url: str) -> None:
    """The person signs in; the server redirects the browser to relay's loopback listener."""
    with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310  (loopback)
        assert page.status == 200


def submit(port: int, secret: str, sender: str, rcpt: str, subject: str) -> tuple[int, str]:
    """One mail from a legacy app; the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.login("alice", secret)
        client.mail(sender)
        client.rcpt(rcpt)
        code, reply = client.data(message_text(sender, rcpt, subject).encode())
    return code, reply.decode()


def check_report(setup: RelaySetup) -> dict[str, Any]:
    result = setup.cli("check", "alice", "--json")
    report: dict[str, Any] = json.loads(result.out)
    return report


def stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in report["stages"] if s["name"] == name)
    return found


@pytest.mark.peers
def test_an_authorized_user_sends_with_xoauth2_and_the_sent_copy_is_filed_with_it(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = oauth_setup(mail_peers, oauth_server, tmp_path)
    assert "needs-authorize" in setup.cli("user", "list").out
    output = authorize(setup)
    assert "user alice: authorized; scopes granted: mail offline_access" in output
    assert "relay check alice" in output
    assert "relay user authorize alice --device" in output  # the provider has a device flow
    exchange = next(
        r for r in oauth_server.token_requests if r["grant_type"] == "authorization_code"
    )
    assert exchange["code_verifier"]  # PKCE
    assert "OAuth2, authorized" in setup.cli("user", "show", "alice").out

    report = check_report(setup)
    assert report["passed"], [s for s in report["stages"] if s["status"] == "fail"]
    token_state = stage(report, "oauth2")["facts"]
    assert token_state["scopes"] == ["mail", "offline_access"]
    assert token_state["access_expires_at"] and token_state["refreshed_at"]
    assert stage(report, "auth")["facts"]["mechanism"] == "XOAUTH2"

    secret, subject = local_secret_of(setup), f"oauth {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, secret, alice.address, bob.address, subject)
        assert code == 250 and "sent" in reply, reply
        assert find_by_subject(mail_peers, bob, subject)
        copies = wait_for_subject(mail_peers, alice, "Sent", subject)
        log = relay.log()
    assert copies, log
    assert f"sasl_method=XOAUTH2, sasl_username={alice.address}" in mail_peers.postfix_log()

    # Neither token in logs (at debug level), CLI output or the database files.
    refresh = [r["refresh_token"] for r in oauth_server.token_requests if "refresh_token" in r]
    access = [r["token"] for r in oauth_server.introspection_requests]
    assert refresh and access
    shown = [log, setup.cli("user", "show", "alice").out, setup.cli("user", "list").out]
    for token in {*refresh, *access}:
        assert all(token not in text for text in shown)
        assert every_database_byte_free_of(setup, token.encode())
    for token in access:  # nor the SASL message that carries it, base64-encoded
        sasl = f"user={alice.address}\x01auth=Bearer {token}\x01\x01".encode()
        assert base64.b64encode(sasl).decode() not in log


def wait_for_subject(
    peers: MailPeers, account: Any, mailbox: str, subject: str, timeout: float = 20.0
) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in peers.mailbox_messages(account, mailbox) if subject.encode() in m]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.peers
def test_an_access_token_expiring_between_two_mails_is_renewed_once_for_twenty_in_flight(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    oauth_server.access_token_lifetime = 4  # renewed from 3 s on (a quarter ahead)
    setup = oauth_setup(mail_peers, oauth_server, tmp_path)
    authorize(setup)
    secret, run = local_secret_of(setup), uuid.uuid4().hex
    with relay_process(setup) as relay:
        assert submit(relay.port, secret, alice.address, bob.address, f"first {run}")[0] == 250
        assert oauth_server.refresh_count(alice.address) == 1
        time.sleep(4.2)  # the first access token has expired
        replies: list[tuple[int, str]] = []

        def send(number: int) -> None:
            replies.append(
                submit(relay.port, secret, alice.address, bob.address, f"burst {number} {run}")
            )

        threads = [threading.Thread(target=send, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log = relay.log()
    assert [code for code, _ in replies] == [250] * 20, replies
    assert oauth_server.refresh_count(alice.address) == 2, log
    for number in range(20):
        assert find_by_subject(mail_peers, bob, f"burst {number} {run}")


@pytest.mark.peers
def test_a_revoked_grant_keeps_mail_queued_until_the_user_authorizes_again(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = oauth_setup(mail_peers, oauth_server, tmp_path)
    authorize(setup)
    oauth_server.revoke(alice.address)  # the user removed relay's access at the provider
    secret, subject = local_secret_of(setup), f"revoked {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, secret, alice.address, bob.address, subject)
        assert code == 250 and "queued" in reply, reply
        assert "must authorize relay" in reply and "relay user authorize alice" in reply
        assert "oauth.authorization_needed user=alice" in relay.log()
        assert "needs-authorize" in setup.cli("user", "list").out
        report = check_report(setup)
        failed = stage(report, "oauth2")
        assert report["failed_stage"] == "oauth2" and "invalid_grant" in failed["summary"]
        assert "relay user authorize alice" in failed["fix"]
        assert not find_by_subject(mail_peers, bob, subject, timeout=1.0)

        output = authorize(setup)
        assert "1 queued message(s) due now" in output
        assert find_by_subject(mail_peers, bob, subject), relay.log()
    assert "enabled" in setup.cli("user", "list").out


def test_device_sign_in_stores_a_grant_without_a_browser_on_this_machine(
    tmp_path: Path,
) -> None:
    with AuthorizationServer(device_interval=0) as server:
        provider = {
            "smtp": {"host": "127.0.0.1", "port": 1, "tls": "starttls"},
            "oauth2": {
                "client_id": server.public_client_id,  # a public client: no secret
                "authorize_url": server.authorize_url,
                "token_url": server.token_url,
                "device_url": server.device_url,
                "scopes": list(DEFAULT_SCOPES),
            },
        }
        setup = write_config(tmp_path, {"lab": provider})
        added = setup.cli(
            "user", "add", "alice", "--provider", "lab", "--email", "alice@example.org", "--oauth2"
        )
        assert added.status == 0, added.err

        def approve(user_code: str) -> None:
            server.approve_device(user_code, "alice@example.org")

        output = authorize(setup, "--device", approve=approve)
        verification_url = server.verification_url
    assert f"open {verification_url} and enter the code" in output
    assert "user alice: authorized" in output
    shown = setup.cli("user", "show", "alice").out
    assert "OAuth2, authorized" in shown and "scopes mail offline_access" in shown


def test_authorize_refuses_a_provider_without_an_oauth2_section(tmp_path: Path) -> None:
    setup = write_config(tmp_path, {"lab": {"smtp": {"host": "127.0.0.1", "tls": "starttls"}}})
    setup.add_user("alice", "lab", "alice@example.org", "pw")
    refused = setup.cli("user", "authorize", "alice")
    assert refused.status != 0
    assert "provider 'lab' has no oauth2 section" in refused.err


@pytest.mark.peers
def test_a_token_the_provider_refuses_before_its_expiry_is_renewed_and_used(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = oauth_setup(mail_peers, oauth_server, tmp_path)
    authorize(setup)
    edit_config(setup, queue={"connection_idle_timeout": 0.5})  # the next mail logs in afresh
    secret, run = local_secret_of(setup), uuid.uuid4().hex
    with relay_process(setup) as relay:
        assert submit(relay.port, secret, alice.address, bob.address, f"one {run}")[0] == 250
        oauth_server.expire_access_tokens(alice.address)  # cut short at the provider
        time.sleep(1.0)
        code, reply = submit(relay.port, secret, alice.address, bob.address, f"two {run}")
        log = relay.log()
    assert code == 250 and "sent" in reply, log
    assert oauth_server.refresh_count(alice.address) == 2
    assert find_by_subject(mail_peers, bob, f"two {run}")


@pytest.mark.peers
def test_a_login_refused_even_with_a_fresh_token_keeps_the_mail_queued(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = oauth_setup(mail_peers, oauth_server, tmp_path)
    providers = yaml.safe_load(setup.config_path.read_text())["providers"]
    # Tokens without the mail scope: Postfix (through Dovecot) refuses every one of them.
    providers["lab"]["oauth2"]["scopes"] = ["offline_access"]
    edit_config(setup, providers=providers)
    authorize(setup)
    secret, subject = local_secret_of(setup), f"refused {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, secret, alice.address, bob.address, subject)
    # Postfix answers 535 alike for a bad token and for a failed token check: not a bounce.
    assert code == 250 and "queued" in reply and "535" in reply, reply
    assert "refused a fresh OAuth2 token" in reply  # not the advice for passwords
    assert oauth_server.refresh_count(alice.address) == 2  # renewed once after the refusal
    listed = setup.cli("queue", "list")
    assert "1 queued" in listed.out, listed.out
