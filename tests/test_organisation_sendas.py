"""Send As a shared mailbox, and Graph's lost answers: against the real Postfix and Dovecot.

alice logs in upstream as herself (the organisation's app stands in for her) and sends as
sales@example.org, a shared mailbox she has Send As rights on (an alias of hers in relay). The
copy lands where the provider would put it: alice's Sent, or sales's with sent_copy_mailbox.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from relay.queue.admin import open_queue_admin
from tests.harness import RelaySetup, relay_process, write_config
from tests.peers.graphserver import GraphServer
from tests.peers.mailpeers import MailPeers
from tests.peers.oauthapps import APP_ROLES
from tests.peers.oauthserver import AuthorizationServer
from tests.test_end_to_end import find_by_subject
from tests.test_oauth_flow import wait_for_subject
from tests.test_organisation_peers import (
    EXCHANGE,
    FAST,
    GRAPH,
    app_only,
    peers_endpoints,
    submit,
)

pytestmark = pytest.mark.peers


def send_as_setup(root: Path, provider: dict[str, Any], peers: MailPeers) -> tuple[RelaySetup, str]:
    """alice, logging in as herself, with the shared sales@ address as an alias."""
    setup = write_config(root, {"work": provider}, upstream=FAST, queue={"min_backoff": 1})
    alice, sales = peers.accounts["alice"], peers.accounts["sales"]
    added = setup.cli(
        "user", "add", "alice", "--provider", "work", "--email", alice.address,
        "--alias", sales.address,
    )  # fmt: skip
    assert added.status == 0, added.err
    return setup, added.out.strip()


def sent_subjects(peers: MailPeers, local: str, subject: str) -> int:
    """How many copies of the mail the mailbox's Sent folder holds."""
    account = peers.accounts[local]
    return sum(subject.encode() in m for m in peers.mailbox_messages(account, "Sent"))


@pytest.mark.parametrize(
    ("copy_mailbox", "filed_in", "not_in"),
    [(None, "alice", "sales"), ("sender", "sales", "alice")],
)
def test_mail_sent_as_a_shared_mailbox_is_filed_in_the_sent_of_the_configured_mailbox(
    mail_peers: MailPeers,
    oauth_server: AuthorizationServer,
    tmp_path: Path,
    copy_mailbox: str | None,
    filed_in: str,
    not_in: str,
) -> None:
    alice, sales, dave = (mail_peers.accounts[n] for n in ("alice", "sales", "dave"))
    app = oauth_server.register_app("example.org")
    provider = peers_endpoints(mail_peers) | {
        "oauth2": app_only(oauth_server, tmp_path, app, EXCHANGE)
    }
    if copy_mailbox is not None:
        provider["sent_copy_mailbox"] = copy_mailbox
    setup, secret = send_as_setup(tmp_path / "relay", provider, mail_peers)
    subject = f"send as {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, sales.address, [dave.address], subject)
        assert code == 250 and "sent" in reply, reply
        [arrived] = find_by_subject(mail_peers, dave, subject)
        assert wait_for_subject(mail_peers, mail_peers.accounts[filed_in], "Sent", subject)
        log = relay.log()
    assert f"From: <{sales.address}>".encode() in arrived or sales.address.encode() in arrived
    # Logged in upstream as alice: the shared mailbox is only the From.
    assert f"sasl_username={alice.address}" in mail_peers.postfix_log()
    assert sent_subjects(mail_peers, not_in, subject) == 0, log
    assert sent_subjects(mail_peers, filed_in, subject) == 1


def graph_send_as_setup(
    peers: MailPeers,
    server: AuthorizationServer,
    graph_server: GraphServer,
    root: Path,
    roles: tuple[str, ...] = APP_ROLES,
    **extra: Any,
) -> tuple[RelaySetup, str]:
    app = server.register_app("example.org", roles)
    provider = peers_endpoints(peers) | {
        "transport": "graph",
        "graph_url": graph_server.base_url,
        "oauth2": app_only(server, root, app, GRAPH),
        **extra,
    }
    return send_as_setup(root / "relay", provider, peers)


def test_graph_sends_as_the_shared_mailbox_through_alice_and_files_it_in_her_sent_items(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    alice, sales, dave = (mail_peers.accounts[n] for n in ("alice", "sales", "dave"))
    setup, secret = graph_send_as_setup(mail_peers, oauth_server, graph, tmp_path)
    subject = f"graph send as {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, sales.address, [dave.address], "x")
        assert code == 550 and "ErrorSendAsDenied" in reply, reply  # no Send As right yet
        graph.send_as[alice.address] = {sales.address}  # the admin grants it
        code, reply = submit(relay.port, "alice", secret, sales.address, [dave.address], subject)
        assert code == 250 and "sent" in reply, reply
        assert find_by_subject(mail_peers, dave, subject)
    assert [r.mailbox for r in graph.requests] == [alice.address, alice.address]
    assert sent_subjects(mail_peers, "alice", subject) == 1
    assert sent_subjects(mail_peers, "sales", subject) == 0


def test_graph_with_sent_copy_mailbox_sender_sends_through_the_shared_mailbox_itself(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    sales, dave = mail_peers.accounts["sales"], mail_peers.accounts["dave"]
    setup, secret = graph_send_as_setup(
        mail_peers, oauth_server, graph, tmp_path, sent_copy_mailbox="sender"
    )
    subject = f"graph shared {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, sales.address, [dave.address], subject)
        assert code == 250 and "sent" in reply, reply
        assert find_by_subject(mail_peers, dave, subject)
    assert [r.mailbox for r in graph.requests] == [sales.address]
    assert sent_subjects(mail_peers, "sales", subject) == 1
    assert sent_subjects(mail_peers, "alice", subject) == 0


def wait_until_delivered(setup: RelaySetup, timeout: float = 60.0) -> list[Any]:
    """The queue's entries once it is empty, or as they are at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with open_queue_admin(setup.state_dir / "spool.db") as queue:
            entries = queue.entries()
        if not entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.3)


def test_a_graph_answer_lost_after_sending_is_found_in_sent_items_and_not_sent_again(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    roles = (*APP_ROLES, "Mail.ReadBasic.All")
    setup, secret = graph_send_as_setup(mail_peers, oauth_server, graph, tmp_path, roles)
    graph.drop_next = 1
    subject = f"graph in doubt {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, alice.address, [dave.address], subject)
        assert code == 250 and "queued" in reply, reply  # in doubt: kept, not refused
        assert wait_until_delivered(setup) == [], relay.log()
        log = relay.log()
    assert [r.status for r in graph.requests] == [202]  # sent once, never again
    assert len(find_by_subject(mail_peers, dave, subject)) == 1
    [(mailbox, message_id, status)] = graph.lookups
    assert (mailbox, status) == (alice.address, 200) and message_id.startswith("<")
    assert "found_in_sent=yes" in log and "maybe_duplicate" not in log


def test_a_graph_answer_lost_without_a_read_permission_is_sent_again_and_logged(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, graph: GraphServer, tmp_path: Path
) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    setup, secret = graph_send_as_setup(mail_peers, oauth_server, graph, tmp_path)
    graph.drop_next = 1
    subject = f"graph resent {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, alice.address, [dave.address], subject)
        assert code == 250 and "queued" in reply, reply
        assert wait_until_delivered(setup) == [], relay.log()
        log = relay.log()
    assert [r.status for r in graph.requests] == [202, 202]
    assert [status for _, _, status in graph.lookups] == [403]
    assert "delivery.maybe_duplicate" in log and "could not look in Sent" in log
