"""Who can read /metrics, and what it says about users: token, user labels, address warning."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from relay.config.load import load_config
from relay.config.model import MetricsConfig
from relay.errors import ConfigError
from relay.model import Secret
from relay.ops.metrics import Metrics, MetricsServer, exposure_warning, user_label
from relay.ops.status import read_status
from tests.harness import running_daemon
from tests.rawsmtp import Template, clone, cloned_relay, make_template, rewrite_config
from tests.test_metrics import fetch
from tests.test_server import MESSAGE

TOKEN = "3f9c1d0be27a4c58a1e6b7d2c9f04e11"


@pytest_asyncio.fixture
async def guarded() -> AsyncIterator[MetricsServer]:
    """A metrics server on loopback that asks for TOKEN."""
    server = MetricsServer(Metrics())
    await server.start("127.0.0.1", 0, Secret(TOKEN))
    try:
        yield server
    finally:
        await server.stop()


async def scrape(port: int, **headers: str) -> tuple[int, dict[str, str], str]:
    return await asyncio.to_thread(fetch, port, "/metrics", "GET", headers)


# --- The bearer token ---


async def test_scrape_without_the_token_gets_401_with_a_bearer_challenge(
    guarded: MetricsServer,
) -> None:
    guarded.metrics.mail_accepted("alice", "lab")
    assert guarded.port is not None
    status, headers, body = await scrape(guarded.port)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="relay metrics"'
    assert "alice" not in body and "relay_" not in body


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer", ""],
    ids=["short", "long", "basic", "no-scheme", "no-token", "empty"],
)
async def test_scrape_with_a_wrong_token_gets_401(
    guarded: MetricsServer, authorization: str
) -> None:
    assert guarded.port is not None
    status, _, body = await scrape(guarded.port, Authorization=authorization)
    assert status == 401 and "relay_" not in body


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_scrape_with_the_token_gets_the_metrics(guarded: MetricsServer, scheme: str) -> None:
    guarded.metrics.session_opened()
    assert guarded.port is not None
    status, _, body = await scrape(guarded.port, Authorization=f"{scheme} {TOKEN}")
    assert status == 200 and "relay_sessions_total 1.0" in body.splitlines()


async def test_other_paths_also_need_the_token(guarded: MetricsServer) -> None:
    assert guarded.port is not None
    assert (await asyncio.to_thread(fetch, guarded.port, "/"))[0] == 401


# --- The per-user labels ---


def scraped_lines(metrics: Metrics) -> list[str]:
    from prometheus_client.exposition import generate_latest

    return generate_latest(metrics.registry).decode().splitlines()


def test_user_labels_hash_hides_the_login_behind_a_stable_short_hash() -> None:
    metrics = Metrics(user_labels="hash")
    for record in (metrics.mail_accepted, metrics.mail_delivered, metrics.mail_bounced):
        record("alice", "lab")
    metrics.mail_deferred("bob", "lab")
    lines = scraped_lines(metrics)
    assert not any("alice" in line or "bob" in line for line in lines)
    hashed = user_label("alice", "hash")
    assert re.fullmatch(r"u[0-9a-f]{12}", hashed) and hashed == user_label("alice", "hash")
    assert hashed != user_label("bob", "hash")
    assert f'relay_mails_accepted_total{{provider="lab",user="{hashed}"}} 1.0' in lines
    assert f'relay_mails_bounced_total{{provider="lab",user="{hashed}"}} 1.0' in lines


def test_user_labels_drop_counts_per_provider_only() -> None:
    metrics = Metrics(user_labels="drop")
    metrics.mail_accepted("alice", "lab")
    metrics.mail_accepted("bob", "lab")
    metrics.mail_deferred("bob", "agency")
    lines = scraped_lines(metrics)
    assert not any("user=" in line or "alice" in line or "bob" in line for line in lines)
    assert 'relay_mails_accepted_total{provider="lab"} 2.0' in lines
    assert 'relay_mails_deferred_total{provider="agency"} 1.0' in lines


def test_user_labels_login_is_still_the_default() -> None:
    metrics = Metrics()
    metrics.mail_accepted("alice", "lab")
    assert 'relay_mails_accepted_total{provider="lab",user="alice"} 1.0' in scraped_lines(metrics)


# --- The config keys ---

LAB = "providers:\n  lab:\n    smtp: {host: mail.example.org, port: 587, tls: starttls}\n"


def config_with(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"metrics: {metrics}\n{LAB}")
    return path


def test_token_file_and_user_labels_are_read(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = load_config(config_with(tmp_path, "{token_file: token, user_labels: hash}"))
    assert config.metrics.token_file == tmp_path / "token"
    assert config.metrics.user_labels == "hash"
    token = config.metrics.token()
    assert token is not None and token.reveal() == TOKEN and TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("content", "why"),
    [("", "must hold one token"), ("hunter2", "at least 16"), (f"{TOKEN} {TOKEN}", "one token")],
    ids=["empty", "short", "two-words"],
)
def test_unusable_token_file_is_a_config_error_naming_the_key(
    tmp_path: Path, content: str, why: str
) -> None:
    (tmp_path / "token").write_text(content)
    with pytest.raises(ConfigError) as raised:
        load_config(config_with(tmp_path, "{token_file: token}"))
    [(key, text)] = raised.value.problems
    assert key == "metrics.token_file" and why in text


def test_missing_token_file_and_unknown_user_labels_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(config_with(tmp_path, "{token_file: nowhere, user_labels: hide}"))
    problems = dict(raised.value.problems)
    assert "file not found" in problems["metrics.token_file"]
    assert "expected one of login, hash, drop" in problems["metrics.user_labels"]


# --- The non-loopback warning ---


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_metrics_address_needs_no_warning(address: str) -> None:
    assert exposure_warning(MetricsConfig(enabled=True, address=address)) is None


def test_non_loopback_address_without_a_token_warns_that_anyone_reads_the_user_labels() -> None:
    warning = exposure_warning(MetricsConfig(enabled=True, address="192.0.2.10"))
    assert warning is not None
    assert "anyone who can reach it" in warning and "user labels" in warning
    assert "metrics.token_file" in warning
    dropped = exposure_warning(
        MetricsConfig(enabled=True, address="192.0.2.10", user_labels="drop")
    )
    assert dropped is not None and "user labels" not in dropped


def test_non_loopback_address_with_a_token_warns_that_it_travels_in_plaintext() -> None:
    settings = MetricsConfig(enabled=True, address="::", token_file=Path("/x"))
    warning = exposure_warning(settings)
    assert warning is not None and "plaintext" in warning


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The module's prepared relay directory (user alice)."""
    return make_template(tmp_path_factory.mktemp("template"))


async def test_daemon_on_a_non_loopback_metrics_address_logs_a_warning_at_start(
    template: Template, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup = clone(template, tmp_path)
    (tmp_path / "token").write_text(TOKEN)
    # A token, so that the few seconds on every interface show nothing to a passer-by.
    metrics = {
        "enabled": True,
        "address": "0.0.0.0",  # noqa: S104  (the address under test; the token guards it)
        "port": 0,
        "token_file": str(tmp_path / "token"),
    }
    rewrite_config(setup, metrics=metrics)
    caplog.set_level(logging.INFO)
    async with running_daemon(setup):
        [warning] = [r for r in caplog.records if r.getMessage().startswith("metrics.not_loopback")]
    assert warning.levelno == logging.WARNING
    assert "address=0.0.0.0" in warning.getMessage() and "plaintext" in warning.getMessage()
    assert TOKEN not in caplog.text


async def test_running_relay_asks_for_the_token_and_shows_hashed_users(
    template: Template, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    metrics = {
        "enabled": True,
        "address": "127.0.0.1",
        "port": 0,
        "token_file": str(tmp_path / "token"),
        "user_labels": "hash",
    }
    async with cloned_relay(template, tmp_path, metrics=metrics) as relay:
        client = await relay.client()
        assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
        assert (await client.send(b"RCPT TO:<bob@example.net>\r\n")).code == 250
        assert (await client.send(b"DATA\r\n")).code == 354
        assert (await client.send(MESSAGE + b".\r\n")).code == 250
        status = read_status(relay.setup.state_dir)
        assert status is not None and status.metrics_port is not None
        assert (await scrape(status.metrics_port))[0] == 401
        code, _, body = await scrape(status.metrics_port, Authorization=f"Bearer {TOKEN}")
    assert code == 200
    hashed = user_label("alice", "hash")
    assert f'relay_mails_accepted_total{{provider="lab",user="{hashed}"}} 1.0' in body
    assert "alice" not in body
