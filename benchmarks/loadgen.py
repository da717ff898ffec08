"""The load generator: N concurrent SMTP clients in a process of its own.

`python -m benchmarks.loadgen SPEC_JSON` runs one workload (see LoadSpec) and prints one JSON
line with what it measured. With `idle` set it instead opens that many authenticated
connections, prints `{"ready": ...}`, waits for a line on stdin, then closes them and prints
the result. Counting starts after the warm-up: the warm-up lasts at least `warmup` seconds and
until every client has had one mail accepted (so large mails reach a steady state).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import secrets
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.procstat import machine_busy_seconds, tree_cpu_seconds
from benchmarks.smtpclient import SmtpClient, SmtpReplyError, Target

LINE = b"QmVuY2htYXJrIGJvZHkgbGluZSBvZiBiYXNlNjQtbG9va2luZyB0ZXh0IGZvciByZWxheSB0ZXN0cy4"[:76]
RETRY_PAUSE = 0.05
SHAPE_NOISE = re.compile(r"<[^>]*>|\b[0-9A-Fa-f]*\d[0-9A-Fa-f.]*\b")
IDLE_SETUP_CONCURRENCY = 50


@dataclass(frozen=True)
class LoadSpec:
    """One workload, as the orchestrator hands it over."""

    target: Target
    clients: int = 1
    size: int = 2048
    per_connection: int = 1
    warmup: float = 1.0
    warmup_max: float = 60.0
    duration: float = 5.0
    max_window_mails: int = 0  # end the window early once this many were accepted in it
    min_window_mails: int = 0  # extend the window until this many were accepted in it...
    window_max: float = 60.0  # ...but to no more than this many seconds
    total_mails: int = 0  # send exactly this many, no window (memory probes)
    tail_timeout: float = 120.0
    idle: int = 0  # hold this many authenticated connections instead
    reply_timeout: float = 120.0  # seconds any one reply may take
    watch: dict[str, tuple[int, bool]] = field(default_factory=dict)  # name -> (pid, tree)
    sender: str = "bench@example.org"
    recipient: str = "sink@example.net"

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        """Rebuild a spec from its JSON form."""
        raw: dict[str, Any] = json.loads(text)
        raw["target"] = Target(**raw["target"])
        raw["watch"] = {name: (int(pid), bool(tree)) for name, (pid, tree) in raw["watch"].items()}
        return cls(**raw)

    def to_json(self) -> str:
        """The JSON form passed on the command line."""
        return json.dumps(asdict(self))


def parse_size(text: str) -> int:
    """2k -> 2048, 100k -> 102400, 10m -> 10485760; plain numbers are bytes."""
    units = {"k": 1024, "m": 1024 * 1024}
    text = text.strip().lower()
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def message_header(run: bytes, number: int) -> bytes:
    """A header block with a Message-ID unique across runs, as mail libraries write it."""
    # relay acknowledges a repeated Message-ID (same sender and recipients) without sending
    # it again, as apps retry; a benchmark that reused ids would count mail never delivered.
    return (
        b"From: Bench <bench@example.org>\r\nTo: <sink@example.net>\r\n"
        b"Subject: relay benchmark\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <%s.%d.bench@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" % (run, number)
    )


def message_body(size: int) -> bytes:
    """76-character lines making the whole message (header included) about size bytes."""
    line = LINE + b"\r\n"
    header = len(message_header(b"0" * 12, 10**8))
    lines, rest = divmod(max(size - header, len(line)), len(line))
    # No line starts with ".", so the body needs no dot-stuffing.
    return line * lines + (LINE[: max(rest - 2, 1)] + b"\r\n" if rest else b"")


@dataclass
class Recorder:
    """Completions and failures as the clients report them."""

    clients: int
    per_client: list[int] = field(default_factory=list)
    done: list[tuple[float, float]] = field(default_factory=list)  # (finished, latency)
    errors: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)  # accepted mails by reply shape
    examples: dict[str, str] = field(default_factory=dict)
    window_start: float | None = None
    window_count: int = 0
    window_limit: int = 0
    window_minimum: int = 0
    total_limit: int = 0
    stopping: bool = False
    warm: asyncio.Event = field(default_factory=asyncio.Event)
    window_full: asyncio.Event = field(default_factory=asyncio.Event)
    window_enough: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.per_client = [0] * self.clients

    def accepted(self, client: int, started: float, finished: float, reply: str) -> None:
        """A mail got 250 after its data."""
        self.done.append((finished, finished - started))
        self.replies[reply_shape(reply)] += 1
        self.per_client[client] += 1
        if self.per_client[client] == 1 and min(self.per_client) > 0:
            self.warm.set()
        if self.window_start is not None and not self.stopping:
            self.window_count += 1
            if self.window_limit and self.window_count >= self.window_limit:
                self.window_full.set()
            if self.window_count >= self.window_minimum:
                self.window_enough.set()
        if self.total_limit and len(self.done) >= self.total_limit:
            self.stopping = True

    def failed(self, error: BaseException) -> None:
        """A connection or transaction failed; remember its kind and one example."""
        if isinstance(error, SmtpReplyError):
            key = f"{error.step} {error.code}"
        else:
            key = type(error).__name__
        self.errors[key] += 1
        self.examples.setdefault(key, str(error)[:300])

    def should_start(self) -> bool:
        """Whether a client may begin another mail."""
        if self.total_limit:
            # Reserve nothing: clients stop as soon as enough were accepted.
            return not self.stopping and len(self.done) < self.total_limit
        return not self.stopping


async def client_loop(number: int, spec: LoadSpec, recorder: Recorder, body: bytes) -> None:
    """Submit mails until told to stop; one connection per spec.per_connection mails."""
    sender, recipient = spec.sender.encode(), spec.recipient.encode()
    run = secrets.token_hex(6).encode()
    sequence = number * 10_000_000
    while recorder.should_start():
        started = time.monotonic()
        client: SmtpClient | None = None
        try:
            client = await SmtpClient.connect(spec.target, spec.reply_timeout)
            await client.hello(spec.target)
            for index in range(spec.per_connection):
                if index and not recorder.should_start():
                    break
                if index:
                    started = time.monotonic()
                sequence += 1
                reply = await client.send(sender, recipient, (message_header(run, sequence), body))
                recorder.accepted(number, started, time.monotonic(), reply)
            await client.quit()
            client = None
        except (OSError, EOFError, asyncio.IncompleteReadError, SmtpReplyError) as error:
            recorder.failed(error)
            await asyncio.sleep(RETRY_PAUSE)
        finally:
            if client is not None:
                client.abort()


def reply_shape(text: str) -> str:
    """A reply without its ids and numbers, so replies of one kind count together."""
    return " ".join(SHAPE_NOISE.sub("#", text).split())[:80]


def _sample(spec: LoadSpec) -> dict[str, float]:
    busy, interrupts = machine_busy_seconds()
    cpu = {"loadgen": time.process_time(), "machine": busy, "interrupts": interrupts}
    for name, (pid, tree) in spec.watch.items():
        try:
            cpu[name] = tree_cpu_seconds(pid, tree=tree)
        except OSError:
            cpu[name] = float("nan")
    return cpu


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max in milliseconds (nearest rank)."""
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
        return round(ordered[index] * 1000, 3)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": rank(100)}


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run one workload and return what was measured."""
    recorder = Recorder(
        spec.clients, window_limit=spec.max_window_mails, window_minimum=spec.min_window_mails
    )
    recorder.total_limit = spec.total_mails
    began = time.monotonic()
    body = message_body(spec.size)
    tasks = [asyncio.create_task(client_loop(i, spec, recorder, body)) for i in range(spec.clients)]
    window: dict[str, float] = {}
    cpu: dict[str, float] = {}
    if not spec.total_mails:
        await asyncio.sleep(spec.warmup)
        # Large mails: wait until every client had one accepted, so the pipe is full.
        await _wait_event(recorder.warm, max(0.0, began + spec.warmup_max - time.monotonic()))
        before = _sample(spec)
        window["start"] = recorder.window_start = time.monotonic()
        await _wait_event(recorder.window_full, spec.duration)
        if not recorder.window_full.is_set():
            # Slow, bursty workloads (50 clients of 10 MB finish together) need a window
            # long enough to see a round of completions, or the rate would read 0.
            spent = time.monotonic() - window["start"]
            await _wait_event(recorder.window_enough, max(0.0, spec.window_max - spent))
        window["end"] = time.monotonic()
        recorder.stopping = True
        after = _sample(spec)
        cpu = {name: round(after[name] - before[name], 4) for name in after}
        window["seconds"] = window["end"] - window["start"]
    finished, pending = await asyncio.wait(tasks, timeout=spec.tail_timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    in_window = [
        latency
        for done, latency in recorder.done
        if window and window["start"] <= done <= window["end"]
    ]
    latencies = in_window if window else [latency for _, latency in recorder.done]
    return {
        "window": window,
        "accepted_window": len(in_window),
        "accepted_total": len(recorder.done),
        "latency_ms": percentiles(latencies),
        "errors": dict(recorder.errors),
        "error_examples": recorder.examples,
        "replies": dict(recorder.replies.most_common(5)),
        "cpu_seconds": cpu,
        "aborted_clients": len(pending),
        "seconds_total": round(time.monotonic() - began, 3),
        "warm": recorder.warm.is_set(),
    }


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass


async def run_idle(spec: LoadSpec) -> dict[str, Any]:
    """Hold spec.idle authenticated connections until a line arrives on stdin."""
    gate = asyncio.Semaphore(IDLE_SETUP_CONCURRENCY)
    recorder = Recorder(1)

    async def open_one() -> SmtpClient | None:
        async with gate:
            try:
                client = await SmtpClient.connect(spec.target, spec.reply_timeout)
            except (OSError, asyncio.IncompleteReadError, SmtpReplyError) as error:
                recorder.failed(error)
                return None
            try:
                await client.hello(spec.target)
            except (OSError, asyncio.IncompleteReadError, SmtpReplyError) as error:
                recorder.failed(error)
                client.abort()
                return None
            return client

    started = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(spec.idle)))
    held = [client for client in opened if client is not None]
    _say(
        {
            "ready": len(held),
            "failed": dict(recorder.errors),
            "setup_seconds": round(time.monotonic() - started, 3),
        }
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    results = await asyncio.gather(*(client.quit() for client in held), return_exceptions=True)
    still_open = sum(1 for result in results if result is None)
    return {
        "held": len(held),
        "errors": dict(recorder.errors),
        "error_examples": recorder.examples,
        "closed_cleanly": still_open,
    }


def _say(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def main() -> None:
    """Entry point of the load generator process."""
    spec = LoadSpec.from_json(sys.argv[1])
    # Its own sockets: idle probes hold more connections than the usual soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if spec.idle:
        _say(asyncio.run(run_idle(spec)))
    else:
        _say(asyncio.run(run_load(spec)))


if __name__ == "__main__":
    main()
