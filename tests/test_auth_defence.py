"""AUTH under attack: failures cost the same, guessing pays without the real user paying, slots."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay.config.load import load_config
from relay.config.model import LimitsConfig
from relay.daemon import Daemon, open_services
from relay.listener.authgate import Attempt, AuthGate
from relay.listener.throttle import MAX_TRACKED_KEYS
from relay.policy import (
    Admission,
    Eviction,
    auth_admission,
    unauthenticated_cap,
    unauthenticated_eviction,
)
from relay.reply import AUTH_BUSY, AUTH_TIMEOUT, UNAUTHENTICATED_EVICTED
from relay.state.localauth import SCRYPT_MAXMEM, SCRYPT_N, SCRYPT_P, SCRYPT_R, LocalVerifier
from tests.harness import write_config
from tests.rawsmtp import PLACEHOLDER, RawClient, Reply, Template, clone, cloned_relay
from tests.rawsmtp import rewrite_config as rewrite
from tests.test_config import assert_problem, write
from tests.test_server import MESSAGE

DEFAULT_COST = (SCRYPT_N, SCRYPT_R, SCRYPT_P)
BOB_SECRET = "bob's own chosen secret"  # chosen, so stored with scrypt
QUICK_PENALTY = {"auth_failure_delay": 0.01, "auth_failure_max_delay": 0.05}
WAIT_LIMIT = 20.0  # seconds a test waits for the relay to reach a state before failing


@dataclass(frozen=True)
class Users:
    """The module's prepared relay: alice (generated secret), bob (chosen), dave (disabled)."""

    template: Template

    @property
    def alice(self) -> str:
        """alice's generated secret."""
        return self.template.secret


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Users:
    """`relay init` and `relay user add` once for the module; each test copies the result."""
    root = tmp_path_factory.mktemp("defence")
    setup = write_config(root / "relay", {"lab": PLACEHOLDER})
    alice = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
    chosen = root / "bob-secret"
    chosen.write_text(BOB_SECRET + "\n")
    setup.add_user("bob", "lab", "bob@example.org", "x", "--local-password-file", str(chosen))
    setup.add_user("dave", "lab", "dave@example.org", "x")
    assert setup.cli("user", "disable", "dave").status == 0
    return Users(Template(setup, alice))


@dataclass
class Kdf:
    """hashlib.scrypt as relay calls it, recording each run's cost; can be held mid-run."""

    runs: list[tuple[int, int, int]] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.go.set()

    def __call__(self, secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
        self.runs.append((n, r, p))
        self.running.set()
        self.go.wait(WAIT_LIMIT)
        return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=32)

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Every scrypt started inside blocks until the block ends."""
        self.go.clear()
        try:
            yield
        finally:
            self.go.set()


@dataclass
class Defended:
    """A running relay whose local verifier runs the recording Kdf."""

    daemon: Daemon
    kdf: Kdf

    @property
    def port(self) -> int:
        """The listening port."""
        return self.daemon.addresses[0][1]

    @property
    def gate(self) -> AuthGate:
        """The listener's AUTH gate."""
        return self.daemon.handler.gate


@asynccontextmanager
async def defended_relay(users: Users, tmp_path: Path, **limits: Any) -> AsyncIterator[Defended]:
    """A copy of the prepared relay with these limits, running in this loop; always stopped."""
    setup = clone(users.template, tmp_path)
    rewrite(setup, limits=limits)
    kdf = Kdf()
    parts = open_services(load_config(setup.config_path), {})
    parts = replace(parts, services=replace(parts.services, verifier=LocalVerifier(kdf)))
    daemon = Daemon(parts)
    await daemon.start()
    try:
        yield Defended(daemon, kdf)
    finally:
        await daemon.drain(1.0)
        await daemon.stop()


@asynccontextmanager
async def clients() -> AsyncIterator[list[RawClient]]:
    """A list to put raw clients in; all closed at the end."""
    opened: list[RawClient] = []
    try:
        yield opened
    finally:
        for client in opened:
            await client.close()


async def connect(port: int, opened: list[RawClient], source: str = "127.0.0.1") -> RawClient:
    """A raw client from a loopback source address, greeted and past EHLO."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    client = RawClient(reader, writer)
    opened.append(client)
    assert (await client.reply()).code == 220
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    return client


def plain(login: str, secret: str) -> bytes:
    """An AUTH PLAIN command line with an initial response."""
    return b"AUTH PLAIN " + base64.b64encode(f"\0{login}\0{secret}".encode()) + b"\r\n"


async def until(condition: Callable[[], bool]) -> None:
    """Wait until the relay reaches a state (checked between its steps), or fail."""
    async with asyncio.timeout(WAIT_LIMIT):
        while not condition():
            await asyncio.sleep(0.01)


# --- Item 2: a failure costs one scrypt at the same cost, whatever the login ---------------------


@pytest.mark.parametrize(
    ("login", "secret"),
    [
        ("nobody", "a guess"),  # no such login
        ("dave", "a guess"),  # disabled
        ("alice", "a guess"),  # a generated secret, stored as SHA-256
        ("bob", "a guess"),  # a chosen secret, stored with scrypt
    ],
    ids=["unknown", "disabled", "generated", "chosen"],
)
async def test_a_failed_login_runs_one_scrypt_at_the_default_cost_whatever_the_login(
    users: Users, tmp_path: Path, login: str, secret: str
) -> None:
    async with defended_relay(users, tmp_path, auth_failure_delay=0) as relay, clients() as opened:
        client = await connect(relay.port, opened)
        reply = await client.send(plain(login, secret))
        assert reply.code == 535 and "5.7.8" in reply.text
        assert relay.kdf.runs == [DEFAULT_COST]


async def test_a_right_secret_is_proven_without_scrypt_once_it_has_verified(
    users: Users, tmp_path: Path
) -> None:
    async with defended_relay(users, tmp_path) as relay, clients() as opened:
        for _ in range(3):
            assert (
                await (await connect(relay.port, opened)).send(plain("bob", BOB_SECRET))
            ).code == 235
            assert (
                await (await connect(relay.port, opened)).send(plain("alice", users.alice))
            ).code == 235
        assert relay.kdf.runs == [DEFAULT_COST]  # bob's first login; alice's SHA-256 is no scrypt


# --- Item 3: guessing pays, the real user does not ------------------------------------------------


@pytest.mark.parametrize("login", ["alice", "bob"])
async def test_a_user_logs_in_at_once_after_junk_failures_from_the_same_loopback_address(
    users: Users, tmp_path: Path, login: str
) -> None:
    secret = users.alice if login == "alice" else BOB_SECRET
    async with defended_relay(users, tmp_path, **QUICK_PENALTY) as relay, clients() as opened:
        junk = await connect(relay.port, opened)
        for index in range(8):
            assert (await junk.send(plain(f"junk{index}", "guess"))).code == 535
        before = replace(relay.gate.stats)
        assert (await (await connect(relay.port, opened)).send(plain(login, secret))).code == 235
        # No count for 127.0.0.1, which every local app shares, and none for the real logins.
        assert len(relay.gate.addresses) == 0 and len(relay.gate.logins) == 0
        assert relay.gate.stats.busy == before.busy
        assert relay.gate.stats.penalised == before.penalised


@pytest.mark.parametrize("login", ["alice", "bob"])
async def test_a_user_logs_in_at_once_while_a_guess_on_their_login_is_in_flight(
    users: Users, tmp_path: Path, login: str
) -> None:
    secret = users.alice if login == "alice" else BOB_SECRET
    async with defended_relay(users, tmp_path, **QUICK_PENALTY) as relay, clients() as opened:
        app = await connect(relay.port, opened)
        assert (await app.send(plain(login, secret))).code == 235  # bob's secret is now cached
        for index in range(5):
            guesser = await connect(relay.port, opened, f"127.0.0.{index + 2}")
            assert (await guesser.send(plain(login, "guess"))).code == 535
        assert relay.gate.logins.count(login, time.monotonic()) == 5
        async with relay.kdf.held():
            guesser = await connect(relay.port, opened, "127.0.0.9")
            guesser.writer.write(plain(login, "another guess"))
            await until(relay.kdf.running.is_set)  # the guess is being verified, held there
            answer = await (await connect(relay.port, opened)).send(plain(login, secret))
            assert answer.code == 235
            second = await (await connect(relay.port, opened, "127.0.0.10")).send(plain(login, "x"))
            assert second.lines == [AUTH_BUSY.line.encode() + b"\r\n"]
        assert (await guesser.reply()).code == 535


async def test_a_chosen_secret_not_verified_since_start_gets_454_while_its_login_is_guessed(
    users: Users, tmp_path: Path
) -> None:
    # The one case the cheap check cannot prove: the app retries and gets in once the guess is
    # answered. (A generated secret never has this case.)
    async with defended_relay(users, tmp_path, **QUICK_PENALTY) as relay, clients() as opened:
        guesser = await connect(relay.port, opened, "127.0.0.2")
        assert (await guesser.send(plain("bob", "guess"))).code == 535
        async with relay.kdf.held():
            guesser.writer.write(plain("bob", "another guess"))
            await until(relay.kdf.running.is_set)
            app = await connect(relay.port, opened)
            assert (await app.send(plain("bob", BOB_SECRET))).code == AUTH_BUSY.code
        assert (await guesser.reply()).code == 535  # its penalty is over: the slot is free
        assert (await app.send(plain("bob", BOB_SECRET))).code == 235


async def test_forty_parallel_guesses_on_one_login_run_one_verification_and_get_454(
    users: Users, tmp_path: Path
) -> None:
    # A penalty long enough that the waiters surely wake within it.
    async with defended_relay(users, tmp_path, auth_failure_delay=0.5) as relay:
        async with clients() as opened:
            guessers = [await connect(relay.port, opened, f"127.0.1.{n + 1}") for n in range(40)]
            async with relay.kdf.held():
                answers = [
                    asyncio.create_task(g.send(plain("bob", f"guess {n}")))
                    for n, g in enumerate(guessers)
                ]
                # One guess verifies (held there); the other 39 wait for it, none verifies.
                await until(lambda: relay.gate.stats.waited == 39)
                assert relay.kdf.runs == [DEFAULT_COST]
            replies: list[Reply] = await asyncio.gather(*answers)
    # The first failed; its penalty holds bob's login, so the 39 that waited get 454.
    assert sorted(reply.code for reply in replies) == [454] * 39 + [535]
    assert relay.kdf.runs == [DEFAULT_COST]
    assert relay.gate.stats.verified == 1


async def test_parallel_guesses_on_many_logins_run_at_most_the_cap_of_checks_at_once(
    users: Users, tmp_path: Path
) -> None:
    async with defended_relay(users, tmp_path, max_concurrent_auth=8, **QUICK_PENALTY) as relay:
        async with clients() as opened:
            guessers = [await connect(relay.port, opened, f"127.0.2.{n + 1}") for n in range(40)]
            async with relay.kdf.held():
                answers = [
                    asyncio.create_task(g.send(plain(f"name{n}", "guess")))
                    for n, g in enumerate(guessers)
                ]
                # Eight checks run (held); the other 32 are answered 454 at once, unverified.
                await until(lambda: sum(a.done() for a in answers) == 32)
                assert all(a.result().code == AUTH_BUSY.code for a in answers if a.done())
                assert relay.gate.stats.verified == 8  # (on 2 CPUs asyncio runs 6 threads at once)
            replies: list[Reply] = await asyncio.gather(*answers)
    assert sorted(reply.code for reply in replies) == [454] * 32 + [535] * 8
    assert relay.kdf.runs == [DEFAULT_COST] * 8


async def test_an_apps_parallel_first_logins_with_a_chosen_secret_all_get_in_with_one_scrypt(
    users: Users, tmp_path: Path
) -> None:
    async with defended_relay(users, tmp_path, max_concurrent_auth=2) as relay:
        async with clients() as opened:
            app = [await connect(relay.port, opened) for _ in range(10)]
            async with relay.kdf.held():
                answers = [asyncio.create_task(c.send(plain("bob", BOB_SECRET))) for c in app]
                await until(lambda: relay.gate.stats.waited == 9)
            replies: list[Reply] = await asyncio.gather(*answers)
    assert [reply.code for reply in replies] == [235] * 10
    assert relay.kdf.runs == [DEFAULT_COST]  # the rest were proven by the first one's success


def test_unknown_logins_have_their_own_bucket_and_cannot_evict_a_known_logins_count() -> None:
    gate, limits_ = AuthGate(clock=lambda: 0.0), LimitsConfig(auth_failure_delay=0)
    gate.failed(Attempt("alice", True, None), limits_)
    for index in range(MAX_TRACKED_KEYS * 2):
        gate.failed(Attempt(f"random{index}", False, None), limits_)
    assert gate.logins.count("alice", 0.0) == 1
    assert len(gate.unknown) <= MAX_TRACKED_KEYS


def test_a_success_clears_only_its_own_logins_count() -> None:
    gate, limits_ = AuthGate(clock=lambda: 0.0), LimitsConfig(auth_failure_delay=0)
    for attempt in (Attempt("alice", True, "192.0.2.7"), Attempt("bob", True, "192.0.2.7")):
        gate.failed(attempt, limits_)
    gate.succeeded(Attempt("bob", True, "192.0.2.7"))
    assert gate.logins.count("bob", 0.0) == 0
    assert gate.logins.count("alice", 0.0) == 1
    assert gate.addresses.count("192.0.2.7", 0.0) == 2  # the address may be guessing others


def test_an_unproven_attempt_verifies_waits_or_is_refused_at_once() -> None:
    # (penalised, in flight, failures, checks running, cap)
    assert auth_admission(False, False, 0, 0, 8) is Admission.VERIFY
    assert auth_admission(False, True, 0, 8, 8) is Admission.WAIT  # one app's parallel start
    assert auth_admission(False, True, 1, 1, 8) is Admission.BUSY  # a login being guessed
    assert auth_admission(True, False, 3, 0, 8) is Admission.BUSY  # a failure's penalty runs
    assert auth_admission(False, False, 0, 8, 8) is Admission.BUSY  # the cap


# --- Item 4: connection slots ---------------------------------------------------------------------


def test_a_new_connection_makes_room_by_closing_the_oldest_unauthenticated_session() -> None:
    # (open, max, unauthenticated, unauthenticated from this address, cap, per address)
    assert unauthenticated_eviction(3, 10, 3, 1, 5, 4) is None
    assert unauthenticated_eviction(5, 10, 5, 1, 5, 4) is Eviction.BUSIEST_ADDRESS
    assert unauthenticated_eviction(10, 10, 1, 0, 5, 4) is Eviction.BUSIEST_ADDRESS
    assert unauthenticated_eviction(4, 10, 4, 4, 5, 4) is Eviction.SAME_ADDRESS
    assert unauthenticated_cap(500, 0.5) == 250 and unauthenticated_cap(1, 0.1) == 1


async def test_junk_connections_up_to_the_caps_cannot_keep_an_app_from_logging_in_and_sending(
    users: Users, tmp_path: Path
) -> None:
    slots = {"max_connections": 6, "unauthenticated_share": 0.5, "max_connections_per_ip": 2}
    async with cloned_relay(users.template, tmp_path, limits=slots) as relay, clients() as junk:
        tracker = relay.daemon.tracker
        for source in (
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.3",
        ):
            await connect(relay.port, junk, source)
        # Three unauthenticated slots (half of six), at most two from any address, loopback too.
        assert tracker.unauthenticated_count == 3
        assert all(len(waiting) <= 2 for waiting in tracker.unauthenticated.values())
        app = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await app.connect()
        await app.login("alice", users.alice)
        await app.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        await app.quit()
        assert len(relay.upstream.handler.received) == 1
        # Oldest first: the 127.0.0.1 pair and two from 127.0.0.2 made room; the app took the
        # slot of the last 127.0.0.1 one. The newest two are still open and can log in.
        for client in junk[:4]:
            assert await client.reader.readline() == UNAUTHENTICATED_EVICTED.line.encode() + b"\r\n"
            assert await client.reader.read() == b""
        for client in junk[4:]:
            assert (await client.send(plain("alice", users.alice))).code == 235


async def test_commands_before_auth_do_not_hold_a_session_open_past_the_deadline(
    users: Users, tmp_path: Path
) -> None:
    async with defended_relay(users, tmp_path, unauthenticated_timeout=0.5) as relay:
        async with clients() as opened:
            client = await connect(relay.port, opened)
            for _ in range(int(WAIT_LIMIT / 0.05)):
                client.writer.write(b"NOOP\r\n")
                line = await client.reader.readline()
                if not line.startswith(b"250"):
                    break
                await asyncio.sleep(0.05)
            assert line == AUTH_TIMEOUT.line.encode() + b"\r\n"
            assert await client.reader.read() == b""
            assert relay.daemon.tracker.unauthenticated_count == 0


async def test_a_logged_in_session_is_not_closed_by_the_unauthenticated_deadline(
    users: Users, tmp_path: Path
) -> None:
    async with defended_relay(users, tmp_path, unauthenticated_timeout=0.2) as relay:
        async with clients() as opened:
            client = await connect(relay.port, opened)
            assert (await client.send(plain("alice", users.alice))).code == 235
            await asyncio.sleep(0.5)
            assert (await client.send(b"NOOP\r\n")).code == 250


async def test_a_logged_in_session_stays_open_while_it_talks_and_closes_once_idle_too_long(
    users: Users, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.daemon.IDLE_CLIENT_TIMEOUT", 0.6)
    async with defended_relay(users, tmp_path) as relay:
        async with clients() as opened:
            client = await connect(relay.port, opened)
            assert (await client.send(plain("alice", users.alice))).code == 235
            for _ in range(4):  # 1.2 s in all, never 0.6 s without a command
                await asyncio.sleep(0.3)
                assert (await client.send(b"NOOP\r\n")).code == 250
            began = time.monotonic()
            assert await asyncio.wait_for(client.reader.read(), WAIT_LIMIT) == b""
            assert 0.4 < time.monotonic() - began < 0.6 + 0.5


@pytest.mark.parametrize("value", [0, 1.5, "half", True])
def test_unauthenticated_share_must_be_a_fraction_up_to_one(tmp_path: Path, value: object) -> None:
    lab = "  lab:\n    smtp: {host: mail.example.org, port: 587, tls: starttls}\n"
    path = write(tmp_path, f"limits: {{unauthenticated_share: {value!r}}}\nproviders:\n{lab}")
    assert_problem(path, "limits.unauthenticated_share", "expected a share above 0 and at most 1")


def test_unauthenticated_timeout_and_auth_cap_are_read_from_limits(tmp_path: Path) -> None:
    lab = "  lab:\n    smtp: {host: mail.example.org, port: 587, tls: starttls}\n"
    text = (
        "limits: {unauthenticated_timeout: 10, max_concurrent_auth: 2, unauthenticated_share: 0.25}"
    )
    config = load_config(write(tmp_path, f"{text}\nproviders:\n{lab}"))
    assert (config.limits.unauthenticated_timeout, config.limits.max_concurrent_auth) == (10.0, 2)
    assert config.limits.unauthenticated_share == 0.25
    bad = write(tmp_path, f"limits: {{unauthenticated_timeout: 0}}\nproviders:\n{lab}")
    assert_problem(bad, "limits.unauthenticated_timeout", "positive number of seconds")
