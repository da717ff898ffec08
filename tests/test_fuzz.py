"""Property-based fuzzing: random SMTP sessions, random DATA bytes, random config trees.

The SMTP properties run against one relay per test function, in an event loop on a
background thread, so that hypothesis drives plain synchronous examples against it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import itertools
import logging
import re
import threading
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from relay.config.load import load_config, parse_config, render_config
from relay.config.model import (
    LimitsConfig,
    ListenerConfig,
    LoggingConfig,
    MetricsConfig,
    ProviderConfig,
    QueueConfig,
    RelayConfig,
    UpstreamConfig,
)
from relay.config.reader import FILE_PROBLEM
from relay.errors import ConfigError
from relay.providers.presets import PRESETS, Endpoint
from tests.rawsmtp import (
    Relay,
    Template,
    assert_reply_line,
    cloned_relay,
    make_template,
)

T = TypeVar("T")
READ_TIMEOUT = 20.0
SMTP_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its reproducer
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONFIG_SETTINGS = settings(max_examples=400, deadline=None, database=None)


# --- One relay per test function, in an event loop on a background thread ---


class LoopThread:
    """An event loop running in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop")
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine in the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Finish async generators and the default executor, stop the loop, join the thread."""
        self.run(self.loop.shutdown_asyncgens())
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class ThreadedRelay:
    """A relay and its recording upstream, serving from a background event loop."""

    def __init__(self, runner: LoopThread, relay: Relay) -> None:
        self.runner = runner
        self.relay = relay

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine next to the relay."""
        return self.runner.run(coroutine)

    def __repr__(self) -> str:
        # Hypothesis prints the arguments of a failing example: not the upstream's raw capture.
        return f"ThreadedRelay(port={self.relay.port})"


@contextmanager
def relay_in_thread(template: Template, root: Path) -> Iterator[ThreadedRelay]:
    """Start a relay in a background loop; stop it and the loop afterwards, even on failure."""
    runner = LoopThread()
    try:
        started: concurrent.futures.Future[tuple[Relay, asyncio.Event]] = (
            concurrent.futures.Future()
        )

        async def hold() -> None:
            stop = asyncio.Event()
            async with cloned_relay(template, root) as relay:
                started.set_result((relay, stop))
                await stop.wait()

        holder = asyncio.run_coroutine_threadsafe(hold(), runner.loop)
        either: list[concurrent.futures.Future[Any]] = [started, holder]
        concurrent.futures.wait(either, 60, concurrent.futures.FIRST_COMPLETED)
        if holder.done():
            holder.result()  # it failed to start: raise why
        relay, stop = started.result(0)
        try:
            yield ThreadedRelay(runner, relay)
        finally:
            runner.loop.call_soon_threadsafe(stop.set)
            holder.result(60)
    finally:
        runner.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The module's prepared relay directory."""
    return make_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def threaded_relay(template: Template, tmp_path: Path) -> Iterator[ThreadedRelay]:
    """One relay for the whole of one property test."""
    with relay_in_thread(template, tmp_path) as running:
        yield running


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if relay or aiosmtpd logged an error (an unhandled exception, a crash)."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


# --- Talking to the relay ---


@dataclass
class Transcript:
    """What one client session saw."""

    replies: list[list[bytes]] = field(default_factory=list)
    sent_mail: int = 0  # DATA answered "250 ... sent": the provider has it

    def record(self, lines: list[bytes]) -> None:
        """Keep a reply and check it: RFC 5321 §4.2 grammar, one code for all its lines."""
        for line in lines:
            assert_reply_line(line)
        assert len({line[:3] for line in lines}) == 1, lines
        # aiosmtpd's answer to an exception the handler did not expect.
        assert b"Error: (" not in b"".join(lines), lines
        self.replies.append(lines)


async def read_reply(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One complete reply, or None if the server closed the connection."""
    lines: list[bytes] = []
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        except ConnectionResetError:
            line = b""
        if not line:
            assert not lines, f"connection closed inside a reply: {lines!r}"
            return None
        lines.append(line)
        if line[3:4] != b"-":
            return lines


async def close(writer: asyncio.StreamWriter) -> None:
    """Close a client connection, whatever state it is in."""
    writer.close()
    with suppress(ConnectionError):
        await writer.wait_closed()


async def sessions_closed(relay: Relay) -> None:
    """Wait until the relay has seen every client connection end."""
    async with asyncio.timeout(READ_TIMEOUT):
        await relay.daemon.tracker.all_closed.wait()


MESSAGE_IDS = itertools.count()


def unique_header() -> bytes:
    """Header fields that make every mail distinct (relay refuses repeats within minutes)."""
    number = next(MESSAGE_IDS)
    return (
        b"Subject: fuzz\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Message-ID: <fuzz-%d@example.org>\r\n\r\n" % number
    )


# --- 1. Random SMTP sessions ---


@dataclass(frozen=True)
class Padded:
    """Bytes made long with x's: its repr stays short when hypothesis prints an example."""

    head: bytes
    size: int
    tail: bytes = b""

    def __bytes__(self) -> bytes:
        return self.head + b"x" * self.size + self.tail


def render(piece: bytes | Padded) -> bytes:
    """The bytes of a step or piece."""
    return bytes(piece)


# Stands for a right AUTH PLAIN line: the secret is only known once the relay runs.
GOOD_AUTH = b"\0good-auth\0"

CONTROL_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=127, exclude_characters="\n"),
    max_size=30,
)
ADDRESSES = st.sampled_from(
    [
        "alice@example.org",
        "ALICE@EXAMPLE.ORG",
        "bob@example.net",
        "ceo@example.org",
        '"a b"@example.net',
        "a@[127.0.0.1]",
        "",
        "@",
        "<>",
        "a@b@c",
        "alice@example.org\x00x",
        '"bob\r"@example.net',
    ]
) | CONTROL_TEXT.map(str.strip)
PARAMETERS = st.sampled_from(
    ["", " SIZE=100", " BODY=8BITMIME", " BODY=7BIT", " SMTPUTF8", " SIZE=9999999999", " X=1"]
) | CONTROL_TEXT.map(lambda text: " " + text)
VERBS = st.sampled_from(["MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "HELO"])
CASINGS = st.sampled_from([str.upper, str.lower, str.title])


def ascii_line(text: str) -> bytes:
    """A command line from ASCII text."""
    return text.encode("ascii") + b"\r\n"


def b64(data: bytes) -> bytes:
    """Base64 text."""
    return base64.b64encode(data)


BODIES = st.lists(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    max_size=5,
).map(lambda lines: "\r\n".join(lines).encode() + b"\r\n")

VALID_STEPS = st.sampled_from(
    [b"MAIL FROM:<alice@example.org>\r\n", b"RCPT TO:<bob@example.net>\r\n", b"DATA\r\n"]
)
STEPS: st.SearchStrategy[bytes | Padded] = st.one_of(
    st.builds(lambda host: ascii_line(f"EHLO {host}"), st.sampled_from(["app.example", "[::1]"])),
    st.builds(lambda text: ascii_line(f"HELO {text}".rstrip()), CONTROL_TEXT),
    st.just(b"EHLO\r\n"),
    st.just(GOOD_AUTH),
    st.builds(lambda blob: b"AUTH PLAIN " + b64(blob) + b"\r\n", st.binary(max_size=40)),
    st.sampled_from([b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AUTH CRAM-MD5\r\n", b"AUTH\r\n"]),
    st.builds(lambda blob: b64(blob) + b"\r\n", st.binary(max_size=30)),
    st.just(b"*\r\n"),
    st.builds(
        lambda address, options: ascii_line(f"MAIL FROM:<{address}>{options}"),
        ADDRESSES,
        PARAMETERS,
    ),
    st.builds(
        lambda address, options: ascii_line(f"RCPT TO:<{address}>{options}"), ADDRESSES, PARAMETERS
    ),
    st.builds(lambda verb, casing, arg: ascii_line(casing(verb) + arg), VERBS, CASINGS, PARAMETERS),
    # The steps of a real mail, weighted up so that sessions often get as far as DATA.
    *[VALID_STEPS] * 6,
    st.sampled_from([b"RSET\r\n", b"NOOP\r\n", b"STARTTLS\r\n", b"HELP MAIL\r\n", b"\r\n"]),
    # Anything at all on one line, short or far over any limit.
    st.builds(ascii_line, CONTROL_TEXT),
    st.builds(lambda junk: junk.replace(b"\n", b"") + b"\r\n", st.binary(max_size=40)),
    st.builds(
        lambda junk, size: Padded(junk.replace(b"\n", b""), size, b"\r\n"),
        st.binary(max_size=10),
        st.sampled_from([600, 1200, 5000]),
    ),
)
GOOD_START = [
    b"EHLO app.example\r\n",
    GOOD_AUTH,
    b"MAIL FROM:<alice@example.org>\r\n",
    b"RCPT TO:<bob@example.net>\r\n",
    b"DATA\r\n",
]
ENDINGS = st.sampled_from(["quit", "close", "close-in-data"])
# Almost-terminators: a sloppy server would end DATA at these; relay must not.
PARTIAL_ENDS = st.sampled_from([b"", b"\r\n.", b"\r\n.\r", b"\n.\n", b"\r\n.\n", b"\r.\r"])


async def random_session(
    relay: Relay,
    steps: list[bytes | Padded],
    bodies: list[bytes],
    ending: str,
    partial_end: bytes,
) -> Transcript:
    """Play one session step by step: every written line earns exactly one reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    transcript = Transcript()
    good_auth = b"AUTH PLAIN " + b64(b"\0alice\0" + relay.secret.encode()) + b"\r\n"
    try:
        greeting = await read_reply(reader)
        assert greeting is not None
        transcript.record(greeting)
        for index, step in enumerate(steps):
            writer.write(good_auth if step == GOOD_AUTH else render(step))
            reply = await read_reply(reader)
            if reply is None:
                return transcript
            transcript.record(reply)
            if reply[-1].startswith(b"354"):
                body = bodies[index % len(bodies)] if bodies else b"hello\r\n"
                # Stuffed as a client does, so that only our own "." line ends the mail.
                writer.write(dot_stuffed(unique_header() + body) + b".\r\n")
                reply = await read_reply(reader)
                if reply is None:
                    return transcript
                transcript.record(reply)
                if reply[-1].startswith(b"250") and b" sent, provider said" in reply[-1]:
                    transcript.sent_mail += 1
            if reply[-1].startswith(b"221"):
                return transcript
        if ending == "quit":
            writer.write(b"QUIT\r\n")
            reply = await read_reply(reader)
            if reply is not None:
                transcript.record(reply)
        elif ending == "close-in-data":
            # Start a mail if the session allows it, then hang up before its end.
            writer.write(b"DATA\r\n")
            reply = await read_reply(reader)
            if reply is not None:
                transcript.record(reply)
                if reply[-1].startswith(b"354"):
                    writer.write(unique_header() + b"never finished" + partial_end)
                    await writer.drain()
        return transcript
    finally:
        await close(writer)
        await sessions_closed(relay)


@given(
    steps=st.lists(STEPS, max_size=25),
    bodies=st.lists(BODIES, max_size=3),
    ending=ENDINGS,
    partial_end=PARTIAL_ENDS,
    prefix=st.sampled_from([0, 1, 2, 3, 4, 5, 5, 5]),  # how much of GOOD_START
)
@example(
    steps=[
        b"MAIL FROM:<alice@example.org>\r\n",
        b"RCPT TO:<bob@example.net\x00x>\r\n",
        b'RCPT TO:<"bob\r"@example.net>\r\n',
        b"DATA\r\n",
    ],
    bodies=[],
    ending="quit",
    partial_end=b"",
    prefix=2,
)
@example(steps=[b"FOO\rBAR\x00\r\n"], bodies=[], ending="quit", partial_end=b"", prefix=0)
@example(steps=[], bodies=[], ending="close-in-data", partial_end=b"\r\n.\r", prefix=4)
@SMTP_SETTINGS
def _random_sessions(
    scene: ThreadedRelay,
    steps: list[bytes | Padded],
    bodies: list[bytes],
    ending: str,
    partial_end: bytes,
    prefix: int,
) -> None:
    # Most interesting paths need a login and a transaction: many sessions start with some.
    steps = [*GOOD_START[:prefix], *steps]
    handler = scene.relay.upstream.handler
    before = len(handler.received)
    transcript = scene.run(random_session(scene.relay, steps, bodies, ending, partial_end))
    event(f"mails sent: {transcript.sent_mail}")
    # Mail reaches the provider only for a DATA that ended with CRLF.CRLF and got 250.
    assert len(handler.received) - before == transcript.sent_mail
    assert all(b"never finished" not in mail.data for mail in handler.received)


def test_random_smtp_sessions_get_well_formed_replies_and_send_only_finished_mail(
    threaded_relay: ThreadedRelay, no_errors_logged: None
) -> None:
    _random_sessions(threaded_relay)
    relay = threaded_relay.relay
    assert threaded_relay.run(relay.queued()) == 0
    # The daemon survived: a fresh connection still gets a greeting and an EHLO answer.
    client = threaded_relay.run(relay.client(logged_in=False))
    assert threaded_relay.run(client.send(b"EHLO app.example\r\n")).code == 250
    threaded_relay.run(client.close())


# --- 2. Random bytes in DATA ---

SMUGGLED = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
DATA_PIECES = st.one_of(
    st.sampled_from(
        [
            b"\r\n",
            b"\n",
            b"\r",
            b".",
            b"..",
            b"\x00",
            b"\r\n.",
            b"\n.\n",
            b"\r.\r",
            b"\r\n.\n",
            b"\n.\r\n",
            b"\r\n.\r",
            b"\xff\xfe",
            b"\r\n.\r\n",
            SMUGGLED,
        ]
    ),
    st.binary(max_size=40),
    st.builds(Padded, st.binary(max_size=5), st.sampled_from([900, 1200])),
)
DATA_PAYLOADS = st.one_of(
    st.lists(DATA_PIECES, max_size=10), st.lists(DATA_PIECES, min_size=10, max_size=80)
)
_ANY_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def dot_stuffed(content: bytes) -> bytes:
    """Content ending in CRLF, dot-stuffed as a client sends it (RFC 5321 §4.5.2)."""
    lines = content.split(b"\r\n")[:-1]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


async def send_data(relay: Relay, payload: bytes, stuffed: bool) -> Transcript:
    """Log in, start a mail, send the payload as DATA, then QUIT; keep every reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    transcript = Transcript()
    login = b"AUTH PLAIN " + b64(b"\0alice\0" + relay.secret.encode())
    try:
        for line in [b"", b"EHLO app.example", login, b"MAIL FROM:<alice@example.org>"]:
            if line:
                writer.write(line + b"\r\n")
            reply = await read_reply(reader)
            assert reply is not None
            transcript.record(reply)
        writer.write(b"RCPT TO:<bob@example.net>\r\nDATA\r\n")
        for _ in range(2):
            reply = await read_reply(reader)
            assert reply is not None
            transcript.record(reply)
        assert transcript.replies[-1][-1].startswith(b"354")
        # Unstuffed, a line "." in the payload ends the mail early, and the rest are commands.
        writer.write(payload if stuffed else payload + b"\r\n")
        writer.write(b".\r\nQUIT\r\n")
        while (reply := await read_reply(reader)) is not None:
            transcript.record(reply)
        # Replies 0-5: greeting, EHLO, AUTH, MAIL, RCPT, 354; then the mail's verdict.
        data_replies = [r for r in transcript.replies[6:] if r[-1][:3] != b"221"]
        transcript.sent_mail = sum(b" sent, provider said" in r[-1] for r in data_replies)
        return transcript
    finally:
        await close(writer)
        await sessions_closed(relay)


@given(pieces=DATA_PAYLOADS, stuffed=st.booleans())
@example(pieces=[b"before\r\n.\r\n", SMUGGLED, b"after"], stuffed=False)
@example(pieces=[b"before\r\n.\r\n", SMUGGLED, b"after"], stuffed=True)
@example(pieces=[b"\n.\n\r.\r\x00..\r\n.\r\n."], stuffed=True)
@example(pieces=[Padded(b"", 999)], stuffed=True)  # 1001 octets with CRLF: aiosmtpd's limit
@example(pieces=[Padded(b"", 1000)], stuffed=True)
@SMTP_SETTINGS
def _random_data(scene: ThreadedRelay, pieces: list[bytes | Padded], stuffed: bool) -> None:
    body = b"".join(render(piece) for piece in pieces)
    handler = scene.relay.upstream.handler
    before, raw_before = len(handler.received), len(handler.raw)
    content = unique_header() + body + b"\r\n"
    payload = dot_stuffed(content) if stuffed else content[:-2]
    transcript = scene.run(send_data(scene.relay, payload, stuffed))
    event(f"stuffed={stuffed} mails sent: {transcript.sent_mail}")
    new = handler.received[before:]
    # Every mail that got 250 arrives once, and nothing else arrives.
    assert len(new) == transcript.sent_mail
    wire = handler.raw[raw_before:]
    assert b"\r" not in wire.replace(b"\r\n", b""), wire
    assert b"\n" not in wire.replace(b"\r\n", b""), wire
    assert wire.count(b"\r\n.\r\n") == len(new)
    if stuffed:
        # Properly stuffed, the payload is one mail: the first reply after DATA is its verdict.
        verdict = transcript.replies[6][-1]
        longest = max(len(line) + 2 for line in payload.split(b"\r\n"))
        if longest <= 1000:  # RFC 5321 §4.5.3.1.6: lines up to 1000 octets must be taken
            assert verdict.startswith(b"250 2.0.0") and b" sent, " in verdict, verdict
        if verdict.startswith(b"250"):
            # RFC 5322 §2.3: each bare CR or LF becomes CRLF; nothing else changes.
            [mail] = new
            assert mail.data == _ANY_LINE_BREAK.sub(b"\r\n", content)
        else:
            assert verdict[:1] == b"5" and new == [], verdict


def test_random_bytes_in_data_arrive_as_one_clean_mail_or_not_at_all(
    threaded_relay: ThreadedRelay, no_errors_logged: None
) -> None:
    _random_data(threaded_relay)
    assert threaded_relay.run(threaded_relay.relay.queued()) == 0


# --- 3. Random config trees ---

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # Bounded: a 400-digit integer hits a known crash, tested on its own below.
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.text(max_size=20),  # short: a long path hits a known crash, tested on its own below
    st.sampled_from(["", " ", "starttls", "implicit", "auto", "gmail", "127.0.0.1", "info"]),
)


def _names(kind: Any, *internal: str) -> list[str]:
    return [f.name for f in dataclasses.fields(kind) if f.name not in internal]


REAL_KEYS = sorted(
    {
        *_names(RelayConfig, "source"),
        *_names(ListenerConfig),
        *_names(LimitsConfig),
        *_names(UpstreamConfig),
        *_names(QueueConfig),
        *_names(LoggingConfig),
        *_names(MetricsConfig),
        *_names(ProviderConfig, "name", "files_sent_itself"),
        *_names(Endpoint),
    }
)
KEYS = st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=10), st.integers(), st.none())
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
NUMBERS = st.one_of(st.integers(-5, 100_000), st.floats(-1, 1e6), st.sampled_from([0, 0.0, 1]))
TEXTS = st.one_of(
    st.sampled_from(["a", "relay.test", "Sent", "/tmp", "x\r\ny", "\x00", " "]),
    st.text(max_size=20),
)
HOSTS = st.sampled_from(
    ["mail.example.org", "127.0.0.1", "::1", "http://x", "mail.example.org:587", "a\r\n", "_x"]
)
ADDRESS_VALUES = st.sampled_from(
    ["127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1", "x"]  # noqa: S104  (never bound)
)
PORTS = st.integers(-1, 70_000)


def section(fields: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[Any, Any]]:
    """A mapping with some of these keys (plausible or junk values) and maybe unknown ones."""
    known = st.fixed_dictionaries({}, optional={k: v | JUNK for k, v in fields.items()})
    extra = st.dictionaries(KEYS, JUNK, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


def numbers_for(kind: Any) -> dict[str, st.SearchStrategy[Any]]:
    """Every field of a numeric config section, with numbers near its limits."""
    return dict.fromkeys(_names(kind), NUMBERS)


ENDPOINTS = section(
    {"host": HOSTS, "port": PORTS, "tls": st.sampled_from(["starttls", "implicit", "none"])}
)
PROVIDERS = st.dictionaries(
    # Mostly valid names, so that the provider's own keys get checked too.
    st.one_of(st.sampled_from(["lab", "gmail", "a.b", "lab-2"]), st.sampled_from(["-bad", "", 7])),
    section(
        {
            "preset": st.sampled_from([*PRESETS, "gmial"]),
            "smtp": ENDPOINTS,
            "imap": ENDPOINTS,
            "ca_file": TEXTS,
            "sent_copy": st.sampled_from(["auto", "always", "never", "sometimes"]),
            "domains": st.lists(TEXTS, max_size=3) | TEXTS,
            "max_recipients": NUMBERS,
            "sent_folder": TEXTS,
        }
    ),
    max_size=3,
)
LISTENERS = section({"address": ADDRESS_VALUES, "port": PORTS, "tls_cert": TEXTS, "tls_key": TEXTS})
DOCUMENTS = st.one_of(
    section(
        {
            "listen": st.lists(LISTENERS, max_size=3),
            "state_dir": TEXTS,
            "key_file": TEXTS,
            "hostname": HOSTS | TEXTS,
            "shutdown_grace": NUMBERS,
            "limits": section(numbers_for(LimitsConfig)),
            "upstream": section(numbers_for(UpstreamConfig)),
            "queue": section(numbers_for(QueueConfig)),
            "logging": section(
                {
                    "level": st.sampled_from(["debug", "info", "loud"]),
                    "format": st.sampled_from(["text", "json", "xml"]),
                }
            ),
            "metrics": section(
                {"enabled": st.booleans(), "address": ADDRESS_VALUES, "port": PORTS}
            ),
            "providers": PROVIDERS,
        }
    ),
    JUNK,
)
# Never created: every file the config names is missing, which is one more problem to report.
BASE_DIR = Path("/nonexistent/relay-fuzz")


def names_a_key_path(path: str, document: object) -> bool:
    """Whether a problem's path starts at one of the document's own top-level keys."""
    if path == FILE_PROBLEM or not isinstance(document, dict):
        return path == FILE_PROBLEM
    return any(path == str(key) or path.startswith((f"{key}.", f"{key}[")) for key in document)


@given(document=DOCUMENTS)
@CONFIG_SETTINGS
def test_random_config_raises_only_config_errors_naming_key_paths_or_round_trips(
    document: object,
) -> None:
    try:
        config = parse_config(document, "fuzz.yaml", BASE_DIR)
    except ConfigError as error:
        assert error.problems
        for path, why in error.problems:
            assert isinstance(path, str) and isinstance(why, str) and why, (path, why)
            assert names_a_key_path(path, document), (path, why)
    else:
        # What `relay config check` prints reads back as the same config.
        assert parse_config(yaml.safe_load(render_config(config)), "fuzz.yaml", BASE_DIR) == config


# --- Crashes the config fuzzer found, outside the files this suite may change ---


def test_a_400_digit_number_of_seconds_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"shutdown_grace": 10**400}, "fuzz.yaml", tmp_path)
    assert refused.value.problems[0][0] == "shutdown_grace"


def test_a_path_longer_than_the_system_allows_is_a_config_error(tmp_path: Path) -> None:
    document = {"providers": {"lab": {"preset": "gmail", "ca_file": "a" * 5000}}}
    with pytest.raises(ConfigError) as refused:
        parse_config(document, "fuzz.yaml", tmp_path)
    assert refused.value.problems[0][0] == "providers.lab.ca_file"


def test_a_5000_digit_integer_in_the_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("shutdown_grace: " + "1" * 5000 + "\n")
    with pytest.raises(ConfigError):
        load_config(path)
