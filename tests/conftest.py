"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.queue.spool import Spool
from tests.peers.graphserver import GraphServer
from tests.peers.mailpeers import MailPeers, peers_available, running_mail_peers
from tests.peers.oauthserver import AuthorizationServer

# --- Real Postfix and Dovecot peers (tests/peers/mailpeers.py); mark users pytest.mark.peers ---


def _require_mail_peers() -> None:
    """Skip when the peers cannot run here, or fail if RELAY_REQUIRE_PEERS=1."""
    problem = peers_available()
    if problem is None:
        return
    if os.environ.get("RELAY_REQUIRE_PEERS") == "1":
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def mail_peers() -> Iterator[MailPeers]:
    """Postfix and Dovecot shared by the whole run; tests must not stop them."""
    _require_mail_peers()
    with running_mail_peers() as peers:
        yield peers


@pytest.fixture
def private_mail_peers() -> Iterator[MailPeers]:
    """Postfix and Dovecot of the test's own, for tests that stop and start them."""
    _require_mail_peers()
    with running_mail_peers() as peers:
        yield peers


@pytest.fixture
def oauth_server(mail_peers: MailPeers) -> Iterator[AuthorizationServer]:
    """The shared peers' OAuth2 server, its grants and knobs reset before and after the test."""
    mail_peers.oauth.reset()
    try:
        yield mail_peers.oauth
    finally:
        mail_peers.oauth.reset()


@pytest.fixture
def graph(mail_peers: MailPeers, oauth_server: AuthorizationServer) -> Iterator[GraphServer]:
    """Graph's sendMail on loopback (tests/peers/graphserver.py), stopped after the test."""
    with GraphServer(mail_peers, oauth_server) as server:
        yield server


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A spool file of the test's own, closed after the test."""
    opened = Spool.open(tmp_path / "spool.db")
    try:
        yield opened
    finally:
        opened.close()
