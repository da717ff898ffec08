"""relay as a well-kept systemd service: readiness, reload, metrics, logs (real Postfix/Dovecot)."""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import RelayProcess, RelaySetup, relay_process, write_config
from tests.peers.mailpeers import MailPeers
from tests.test_end_to_end import message_text, postfix_provider, wait_for_log

pytestmark = pytest.mark.peers


def relay_for_alice(peers: MailPeers, root: Path, **settings: Any) -> tuple[RelaySetup, str]:
    """A relay with provider 'agency' (the peers' Postfix) and user alice; (setup, secret)."""
    setup = write_config(root, {"agency": postfix_provider(peers, "starttls")}, **settings)
    alice = peers.accounts["alice"]
    return setup, setup.add_user("alice", "agency", alice.address, alice.password)


def send(port: int, login: str, secret: str, sender: str, rcpt: str) -> tuple[int, bytes]:
    """One mail through relay; (code, reply) to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(login, secret)
        client.mail(sender)
        client.rcpt(rcpt)
        return client.data(message_text(sender, rcpt, f"ops {uuid.uuid4().hex}"))


def test_ready_is_announced_only_once_the_port_accepts_and_stopping_on_sigterm(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    setup, _ = relay_for_alice(mail_peers, tmp_path)
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify_path))
        systemd.settimeout(15)
        with relay_process(setup, env={"NOTIFY_SOCKET": str(notify_path)}) as relay:
            ready = systemd.recv(4096).decode()
            assert "READY=1" in ready and "queued" in ready
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as probe:
                assert probe.recv(100).startswith(b"220 ")
            relay.process.send_signal(signal.SIGTERM)
            messages = [systemd.recv(4096).decode() for _ in range(2)]
            assert relay.process.wait(timeout=20) == 0
    assert "STOPPING=1" in messages[0]


def test_reload_applies_users_and_providers_to_new_sessions_and_keeps_a_broken_config_out(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup, alice_secret = relay_for_alice(mail_peers, tmp_path)
    with relay_process(setup) as relay:
        carl_secret = setup.add_user("carl", "agency", bob.address, bob.password)
        open_session = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
        open_session.login("alice", alice_secret)
        open_session.mail(alice.address)
        open_session.rcpt(bob.address)
        assert setup.cli("user", "disable", "alice").status == 0
        add_provider(setup, "second", postfix_provider(mail_peers, "implicit"))
        relay.process.send_signal(signal.SIGHUP)
        wait_for_log(relay, "config.reloaded")
        code, _ = open_session.data(message_text(alice.address, bob.address, "in flight"))
        open_session.quit()
        assert code == 250  # the open session finished its mail
        with pytest.raises(smtplib.SMTPAuthenticationError):
            send(relay.port, "alice", alice_secret, alice.address, bob.address)
        assert send(relay.port, "carl", carl_secret, bob.address, alice.address)[0] == 250
        dave = setup.add_user("dave", "second", alice.address, alice.password)
        assert send(relay.port, "dave", dave, alice.address, bob.address)[0] == 250
        setup.config_path.write_text(
            setup.config_path.read_text() + "\nlimits: {max_recipients: lots}\n"
        )
        relay.process.send_signal(signal.SIGHUP)
        wait_for_log(relay, "config.reload_failed")
        assert "limits.max_recipients" in relay.log()
        assert send(relay.port, "carl", carl_secret, bob.address, alice.address)[0] == 250


def add_provider(setup: RelaySetup, name: str, provider: dict[str, Any]) -> None:
    """Add a provider to the config file."""
    document = yaml.safe_load(setup.config_path.read_text())
    document["providers"][name] = provider
    setup.config_path.write_text(yaml.safe_dump(document))


def metrics_port(relay: RelayProcess) -> int:
    """The port the daemon says its metrics endpoint is on."""
    wait_for_log(relay, "metrics.listening")
    line = next(x for x in relay.log().splitlines() if "metrics.listening" in x)
    return int(line.rsplit("port=", 1)[1])


def test_metrics_count_relayed_refused_and_deferred_mail(
    mail_peers: MailPeers, tmp_path: Path, unused_tcp_port: int
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    down = {"smtp": {"host": "127.0.0.1", "port": unused_tcp_port, "tls": "implicit"}}
    setup = write_config(
        tmp_path,
        {"agency": postfix_provider(mail_peers, "starttls"), "down": down},
        metrics={"enabled": True, "port": 0},
    )
    alice_secret = setup.add_user("alice", "agency", alice.address, alice.password)
    dave_secret = setup.add_user("dave", "down", "dave@example.net", "irrelevant")
    with relay_process(setup) as relay:
        port = metrics_port(relay)
        assert send(relay.port, "alice", alice_secret, alice.address, bob.address)[0] == 250
        with pytest.raises(smtplib.SMTPAuthenticationError):
            send(relay.port, "alice", "wrong", alice.address, bob.address)
        code, reply = send(relay.port, "dave", dave_secret, "dave@example.net", bob.address)
        assert code == 250 and b"queued as" in reply
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
    assert 'relay_mails_accepted_total{provider="agency",user="alice"} 1.0' in text
    assert 'relay_mails_delivered_total{provider="agency",user="alice"} 1.0' in text
    assert 'relay_mails_deferred_total{provider="down",user="dave"} 1.0' in text
    assert "relay_auth_failures_total 2.0" in text  # smtplib tries PLAIN, then LOGIN
    assert 'relay_upstream_replies_total{class="2xx",provider="agency"} 1.0' in text


def test_json_logs_parse_line_by_line_and_never_carry_the_password(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup, secret = relay_for_alice(
        mail_peers, tmp_path, logging={"level": "debug", "format": "json"}
    )
    with relay_process(setup) as relay:
        assert send(relay.port, "alice", secret, alice.address, bob.address)[0] == 250
        with pytest.raises(smtplib.SMTPAuthenticationError):
            send(relay.port, "alice", alice.password, alice.address, bob.address)
        time.sleep(0.5)
        lines = relay.log().splitlines()
    events = [json.loads(line) for line in lines]
    assert {"delivery.attempt", "auth.ok", "auth.failed"} <= {e["event"] for e in events}
    attempt = next(e for e in events if e["event"] == "delivery.attempt")
    assert attempt["fields"]["user"] == "alice" and attempt["fields"]["delivered"] == "1"
    assert all(alice.password not in line and secret not in line for line in lines)


def test_status_summarises_daemon_queue_and_users_running_or_not(
    mail_peers: MailPeers, tmp_path: Path, unused_tcp_port: int
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    down = {"smtp": {"host": "127.0.0.1", "port": unused_tcp_port, "tls": "implicit"}}
    setup = write_config(
        tmp_path, {"agency": postfix_provider(mail_peers, "starttls"), "down": down}
    )
    alice_secret = setup.add_user("alice", "agency", alice.address, alice.password)
    dave_secret = setup.add_user("dave", "down", "dave@example.net", "irrelevant")
    setup.add_user("erin", "agency", "erin@example.org", "irrelevant")
    assert setup.cli("user", "disable", "erin").status == 0
    with relay_process(setup) as relay:
        send(relay.port, "alice", alice_secret, alice.address, bob.address)
        send(relay.port, "dave", dave_secret, "dave@example.net", bob.address)
        running = setup.cli("status").out
        assert f"running (pid {relay.process.pid}" in running
        assert f"127.0.0.1:{relay.port}" in running
    stopped = setup.cli("status").out
    for text in (running, stopped):
        assert "users: 2 enabled, 1 disabled" in text
        assert "queue: 1 queued (1 deferred)" in text
        rows = {line.split()[0]: line for line in text.splitlines()[4:]}
        assert "unreachable" in rows["dave"] and rows["dave"].split()[2] == "1"
        assert rows["alice"].split()[2] == "0" and rows["alice"].split()[3] != "-"
        assert "LAST CHECK" in text and rows["erin"].split()[4] == "-"  # never checked
    assert "not running" in stopped
