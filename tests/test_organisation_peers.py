"""Organisation-wide sign-in end to end: no user signs in, the organisation's credential does.

Microsoft app-only (client credentials) and a Google service account (RFC 7523 JWT bearer) get
tokens from tests/peers' authorization server; Dovecot's oauth2 passdbs take them for SMTP and
IMAP; Graph sendMail is tests/peers/graphserver.py, handing mail to the same Postfix.
"""

from __future__ import annotations

import json
import signal
import smtplib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from relay.queue.admin import open_queue_admin
from tests.harness import RelaySetup, relay_process, write_config
from tests.peers.graphserver import GraphServer
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.peers.oauthapps import (
    CLIENT_ASSERTION_TYPE,
    pem_files,
    self_signed_certificate,
    thumbprint,
)
from tests.peers.oauthserver import AuthorizationServer
from tests.test_end_to_end import every_database_byte_free_of, find_by_subject, message_text
from tests.test_oauth_flow import wait_for_subject

pytestmark = pytest.mark.peers

FAST = {"connect_timeout": 5, "timeout": 10}
EXCHANGE = "https://outlook.office365.com/.default"
GRAPH = "https://graph.microsoft.com/.default"


def secret_file(root: Path, name: str, text: str) -> str:
    """A 0600 file holding a secret, as an admin would leave it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def peers_endpoints(peers: MailPeers) -> dict[str, Any]:
    """The test Postfix and the IMAP Dovecot, with the Sent copy always filed by relay."""
    return {
        "smtp": {"host": peers.host, "port": peers.submission_port, "tls": "starttls"},
        "imap": {"host": peers.host, "port": peers.imaps_port, "tls": "implicit"},
        "ca_file": str(peers.ca_file),
        "sent_copy": "always",
    }


def app_only(
    server: AuthorizationServer, root: Path, app: tuple[str, str], scope: str
) -> dict[str, Any]:
    """An oauth2 section with the app's client id and secret file (Microsoft app-only)."""
    return {
        "app_only": True,
        "client_id": app[0],
        "client_secret_file": secret_file(root, "app-secret", app[1] + "\n"),
        "token_url": server.token_url,
        "scopes": [scope],
    }


def setup_with(
    root: Path, provider: dict[str, Any], *accounts: MailAccount
) -> tuple[RelaySetup, dict[str, str]]:
    """relay with provider 'work' and one user per account, added with no password at all."""
    setup = write_config(root, {"work": provider}, upstream=FAST, logging={"level": "debug"})
    secrets = {}
    for account in accounts:
        login = account.address.split("@")[0]
        added = setup.cli("user", "add", login, "--provider", "work", "--email", account.address)
        assert added.status == 0, added.err
        assert "organisation credential" in added.err and "authorize" not in added.err
        secrets[login] = added.out.strip()
    return setup, secrets


def submit(port: int, login: str, secret: str, sender: str, rcpts: list[str], subject: str,
           to: str | None = None) -> tuple[int, str]:  # fmt: skip
    """One mail from a legacy app; the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.login(login, secret)
        client.mail(sender)
        for rcpt in rcpts:
            client.rcpt(rcpt)
        code, reply = client.data(message_text(sender, to or rcpts[0], subject).encode())
    return code, reply.decode()


def test_app_only_microsoft_two_users_send_and_file_sent_copies_without_any_sign_in(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob, dave = (mail_peers.accounts[n] for n in ("alice", "bob", "dave"))
    app = oauth_server.register_app("example.org")
    provider = peers_endpoints(mail_peers) | {
        "oauth2": app_only(oauth_server, tmp_path, app, EXCHANGE)
    }
    setup, secrets = setup_with(tmp_path / "relay", provider, alice, bob)
    assert "enabled" in setup.cli("user", "list").out
    assert "organisation credential" in setup.cli("user", "show", "alice").out
    subjects = {login: f"app-only {login} {uuid.uuid4().hex}" for login in secrets}
    with relay_process(setup) as relay:
        for account in (alice, bob):
            login = account.address.split("@")[0]
            code, reply = submit(
                relay.port, login, secrets[login], account.address, [dave.address], subjects[login]
            )
            assert code == 250 and "sent" in reply, reply
        for account in (alice, bob):
            subject = subjects[account.address.split("@")[0]]
            assert find_by_subject(mail_peers, dave, subject)
            assert wait_for_subject(mail_peers, account, "Sent", subject), relay.log()
        log = relay.log()
    grants = [r for r in oauth_server.token_requests if r["grant_type"] == "client_credentials"]
    assert len(grants) == 1  # one app token, cached, for both mailboxes, SMTP and IMAP
    assert grants[0]["scope"] == EXCHANGE
    assert len(oauth_server.app_introspection_requests) >= 4  # 2 SMTP + 2 IMAP logins
    postfix = mail_peers.postfix_log()
    for account in (alice, bob):
        assert f"sasl_method=XOAUTH2, sasl_username={account.address}" in postfix
    tokens = [r["token"] for r in oauth_server.app_introspection_requests]
    for secret in {app[1], *tokens}:
        assert secret not in log
        assert every_database_byte_free_of(setup, secret.encode())
    report = json.loads(setup.cli("check", "bob", "--json").out)
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert report["passed"], stages
    assert "client credentials" in stages["oauth2"]["facts"]["organisation"]
    assert stages["auth"]["facts"]["mechanism"] == "XOAUTH2"


def test_a_google_service_account_signs_one_assertion_per_user_and_both_send(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    carol, dave, alice = (mail_peers.accounts[n] for n in ("carol", "dave", "alice"))
    key = oauth_server.register_service_account("example.net", ("mail",))
    oauth2 = {
        "service_account_file": secret_file(tmp_path, "sa.json", json.dumps(key)),
        "scopes": ["mail"],
    }
    setup, secrets = setup_with(
        tmp_path / "relay", peers_endpoints(mail_peers) | {"oauth2": oauth2}, carol, dave
    )
    subjects = {login: f"service account {login} {uuid.uuid4().hex}" for login in secrets}
    with relay_process(setup) as relay:
        for account in (carol, dave):
            login = account.address.split("@")[0]
            code, reply = submit(
                relay.port, login, secrets[login], account.address, [alice.address], subjects[login]
            )
            assert code == 250 and "sent" in reply, reply
        sent_folders = {"carol": "Itens Enviados", "dave": "Sent"}  # carol's has no \\Sent flag
        for account in (carol, dave):
            login = account.address.split("@")[0]
            assert find_by_subject(mail_peers, alice, subjects[login])
            assert wait_for_subject(mail_peers, account, sent_folders[login], subjects[login])
        log = relay.log()
    subjects_asserted = sorted(claims["sub"] for claims in oauth_server.assertions)
    assert subjects_asserted == [carol.address, dave.address]  # one JWT per user, cached after
    assert all(claims["aud"] == oauth_server.token_url for claims in oauth_server.assertions)
    assert key["private_key"].split("\n")[1] not in log
    assert every_database_byte_free_of(setup, key["private_key"].split("\n")[1].encode())


def graph_setup(
    peers: MailPeers, server: AuthorizationServer, graph: GraphServer, root: Path
) -> tuple[RelaySetup, str]:
    app = server.register_app("example.org")
    provider = peers_endpoints(peers) | {
        "transport": "graph",
        "graph_url": graph.base_url,
        "oauth2": app_only(server, root, app, GRAPH),
    }
    setup, secrets = setup_with(root / "relay", provider, peers.accounts["alice"])
    return setup, secrets["alice"]


def test_graph_sends_the_mime_to_every_envelope_recipient_and_files_one_sent_copy(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    alice, bob, dave = (mail_peers.accounts[n] for n in ("alice", "bob", "dave"))
    setup, secret = graph_setup(mail_peers, oauth_server, graph, tmp_path)
    subject = f"graph {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        # bob is only in the envelope (a Bcc the app stripped): Graph learns of him by Bcc.
        code, reply = submit(
            relay.port, "alice", secret, alice.address, [dave.address, bob.address], subject
        )
        assert code == 250 and "sent" in reply, reply
        assert find_by_subject(mail_peers, dave, subject)
        assert find_by_subject(mail_peers, bob, subject)
        copies = wait_for_subject(mail_peers, alice, "Sent", subject)
        time.sleep(1.0)  # relay must file no copy of its own meanwhile
        copies = [m for m in mail_peers.mailbox_messages(alice, "Sent") if subject.encode() in m]
        log = relay.log()
    assert len(copies) == 1 and f"Bcc: {bob.address}".encode() in copies[0], log
    [request] = graph.requests
    assert (request.mailbox, request.status) == (alice.address, 202)
    grants = [r for r in oauth_server.token_requests if r["grant_type"] == "client_credentials"]
    assert [g["scope"] for g in grants] == [GRAPH]
    assert "sent_copy" not in log or "sent.appended" not in log


def test_graph_429_retry_after_seven_defers_the_mail_exactly_seven_seconds(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    setup, secret = graph_setup(mail_peers, oauth_server, graph, tmp_path)
    graph.throttle_next("7")
    with relay_process(setup) as relay:
        before = time.time()
        code, reply = submit(relay.port, "alice", secret, alice.address, [dave.address], "t")
        after = time.time()
        with open_queue_admin(setup.state_dir / "spool.db") as queue:
            [entry] = queue.entries()
    assert code == 250 and "queued" in reply, reply
    # The attempt began after `before` and ended before `after`: next_attempt is its end + 7 s.
    assert before + 7 <= entry.next_attempt <= after + 7
    assert "ApplicationThrottled" in entry.last_reply and "Retry-After 7 s" in entry.last_reply


def test_graph_429_retry_after_one_is_tried_again_after_that_second_and_delivered(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    setup, secret = graph_setup(mail_peers, oauth_server, graph, tmp_path)
    graph.throttle_next("1", status=503)
    subject = f"graph retry {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, alice.address, [dave.address], subject)
        assert code == 250 and "queued" in reply, reply
        assert find_by_subject(mail_peers, dave, subject), relay.log()
    assert [r.status for r in graph.requests] == [503, 202]


def test_graph_403_access_denied_reaches_the_app_as_a_5xx_with_the_hint(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    setup, secret = graph_setup(mail_peers, oauth_server, graph, tmp_path)
    graph.denied.add(alice.address)
    with relay_process(setup) as relay:
        code, text = submit(relay.port, "alice", secret, alice.address, [dave.address], "denied")
    assert code == 550 and text.startswith("5.7.1 Graph 403 ErrorAccessDenied"), text
    assert "(hint: the app needs the Mail.Send application permission" in text


def test_relay_check_of_a_graph_user_probes_the_mailbox_instead_of_smtp_stages(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    setup, _ = graph_setup(mail_peers, oauth_server, graph, tmp_path)
    report = json.loads(setup.cli("check", "alice", "--json").out)
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert report["passed"], stages
    assert stages["graph"]["status"] == "pass" and stages["graph"]["facts"]["status"] == 400
    assert stages["auth"]["status"] == "skip" and "Graph" in stages["auth"]["summary"]
    assert graph.requests[0].mime is None  # the probe sent nothing
    graph.denied.add(mail_peers.accounts["alice"].address)
    report = json.loads(setup.cli("check", "alice", "--json").out)
    assert report["failed_stage"] == "graph"
    failed = next(s for s in report["stages"] if s["name"] == "graph")
    assert "ErrorAccessDenied" in failed["reply"] and "Mail.Send" in failed["fix"]


def test_a_revoked_client_secret_keeps_mail_queued_logs_once_and_check_names_the_fix(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    app = oauth_server.register_app("example.org")
    oauth_server.new_app_secret(app[0])  # the admin deleted the secret relay has
    provider = peers_endpoints(mail_peers) | {
        "oauth2": app_only(oauth_server, tmp_path, app, EXCHANGE)
    }
    setup, secrets = setup_with(tmp_path / "relay", provider, alice)
    with relay_process(setup) as relay:
        for n in range(2):
            code, reply = submit(
                relay.port, "alice", secrets["alice"], alice.address, [dave.address], f"r{n}"
            )
            assert code == 250 and "queued" in reply, reply
        log = relay.log()
    assert log.count("oauth.organisation_failed") == 1, log
    assert "Certificates & secrets" in log
    with open_queue_admin(setup.state_dir / "spool.db") as queue:
        assert len(queue.entries()) == 2
    report = json.loads(setup.cli("check", "alice", "--json").out)
    assert report["failed_stage"] == "oauth2"
    failed = next(s for s in report["stages"] if s["name"] == "oauth2")
    assert "AADSTS7000215" in failed["reply"]
    assert "Certificates & secrets" in failed["fix"] and "app-secret" in failed["fix"]


def test_app_only_with_a_certificate_signs_a_client_assertion_and_check_warns_of_expiry(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    client_id, _ = oauth_server.register_app("example.org")
    certificate, key = self_signed_certificate(5)  # expires in five days
    oauth_server.upload_certificate(client_id, certificate)
    certificate_file, key_file = pem_files(tmp_path / "creds", certificate, key)
    oauth2 = {
        "app_only": True,
        "client_id": client_id,
        "client_certificate_file": certificate_file,
        "client_key_file": key_file,
        "token_url": oauth_server.token_url,
        "scopes": [EXCHANGE],
    }
    setup, secrets = setup_with(
        tmp_path / "relay", peers_endpoints(mail_peers) | {"oauth2": oauth2}, alice
    )
    subject = f"certificate {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(
            relay.port, "alice", secrets["alice"], alice.address, [dave.address], subject
        )
        assert code == 250 and "sent" in reply, reply
        assert find_by_subject(mail_peers, dave, subject)
        assert wait_for_subject(mail_peers, alice, "Sent", subject)
        log = relay.log()
    [grant] = [r for r in oauth_server.token_requests if r["grant_type"] == "client_credentials"]
    assert grant["client_assertion_type"] == CLIENT_ASSERTION_TYPE and "client_secret" not in grant
    [checked] = oauth_server.client_assertions
    assert checked["alg"] == "PS256" and checked["x5t#S256"] == thumbprint(certificate)
    report = json.loads(setup.cli("check", "alice", "--json").out)
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert report["passed"], stages
    [warning] = stages["oauth2"]["warnings"]
    assert "expires in 4 days" in warning and certificate_file in warning
    key_line = Path(key_file).read_text().splitlines()[1]
    assert key_line not in log and grant["client_assertion"] not in log
    assert every_database_byte_free_of(setup, key_line.encode())


def test_a_revoked_secret_shows_in_status_asks_once_and_mail_goes_once_the_file_is_replaced(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    client_id, _ = oauth_server.register_app("example.org")
    new_secret = oauth_server.new_app_secret(client_id)  # the secret relay has was deleted
    provider = peers_endpoints(mail_peers) | {
        "oauth2": app_only(oauth_server, tmp_path, (client_id, "deleted-secret"), EXCHANGE)
    }
    setup = write_config(
        tmp_path / "relay",
        {"work": provider},
        upstream=FAST,
        queue={"min_backoff": 1, "max_backoff": 2},
    )
    added = setup.cli("user", "add", "alice", "--provider", "work", "--email", alice.address)
    assert added.status == 0, added.err
    secret = added.out.strip()
    subjects = [f"waits {n} {uuid.uuid4().hex}" for n in range(2)]
    with relay_process(setup) as relay:
        for subject in subjects:
            code, reply = submit(
                relay.port, "alice", secret, alice.address, [dave.address], subject
            )
            assert code == 250 and "queued" in reply, reply
        deadline = time.monotonic() + 30
        while relay.log().count("delivery.attempt") < 4 and time.monotonic() < deadline:
            time.sleep(0.2)  # retries come every second or two (max_backoff)
        status = setup.cli("status").out
        grants = [r for r in oauth_server.token_requests if r["grant_type"] == "client_credentials"]
        assert relay.log().count("delivery.attempt") >= 4
        assert len(grants) == 1  # held: not asked again per mail or per retry
        assert "ORGANISATION CREDENTIAL FAILING" in status
        assert "work: " in status and "Certificates & secrets" in status
        Path(provider["oauth2"]["client_secret_file"]).write_text(new_secret + "\n")
        relay.process.send_signal(signal.SIGHUP)  # the admin's reload (not needed, harmless)
        for subject in subjects:
            assert find_by_subject(mail_peers, dave, subject), relay.log()
        log = relay.log()
        after = setup.cli("status").out
    assert log.count("oauth.organisation_failed") == 1
    assert "oauth.organisation_restored provider=work" in log
    assert "ORGANISATION CREDENTIAL FAILING" not in after
    with open_queue_admin(setup.state_dir / "spool.db") as queue:
        assert queue.entries() == []
    assert new_secret not in log
