"""One pooled upstream session sending mails one after another, pipelined or one by one.

    python -m benchmarks.upstream_rtt [--stepwise] [--rtt-ms MS] [--mails N]

It runs relay's UpstreamPool in this process against the benchmark sink, and prints the wall
time and this process's CPU per mail as one JSON line. --stepwise hides PIPELINING from the
pool, so the same sink gets one command per round trip. --rtt-ms puts a loopback proxy in
between that holds every chunk half that long in each direction: a provider's network distance,
which the sink's own delays do not model (they hold the sink from reading, as a slow server).
With a proxy, the CPU figure includes the proxy's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from benchmarks.services import SINK_LOGIN, make_tls, running_sink
from relay.model import Secret
from relay.providers.presets import Endpoint, TlsMode
from relay.tls import TlsContexts
from relay.upstream.account import UpstreamAccount, UpstreamTimeouts
from relay.upstream.pool import PoolSettings, UpstreamPool

MESSAGE = b"From: a@example.org\r\nSubject: x\r\n\r\n" + b"y" * 2000 + b"\r\n"
WARMUP = 20


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    while data := await reader.read(65536):
        loop.call_later(delay, writer.write, data)  # a fixed delay keeps the chunks in order
    loop.call_later(delay, writer.close)


async def _proxy(port: int, delay: float, tasks: set[asyncio.Task[None]]) -> asyncio.Server:
    async def relay_both(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        far_reader, far_writer = await asyncio.open_connection("127.0.0.1", port)
        for task in (_pipe(reader, far_writer, delay), _pipe(far_reader, writer, delay)):
            tasks.add(asyncio.ensure_future(task))

    return await asyncio.start_server(relay_both, "127.0.0.1", 0)


def _hide_pipelining() -> None:
    offers: Callable[[aiosmtplib.SMTP, str], bool] = aiosmtplib.SMTP.supports_extension

    def without(client: aiosmtplib.SMTP, name: str) -> bool:
        return name.lower() != "pipelining" and offers(client, name)

    aiosmtplib.SMTP.supports_extension = without  # type: ignore[method-assign]  # this run only


async def _measure(account: UpstreamAccount, mails: int) -> dict[str, float]:
    settings = PoolSettings("bench.test", UpstreamTimeouts(10.0, 10.0), 1, 600.0)
    pool = UpstreamPool(settings, TlsContexts())
    try:
        for _ in range(WARMUP):
            await pool.send("bench", account, "a@example.org", ["b@example.net"], MESSAGE)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(mails):
            await pool.send("bench", account, "a@example.org", ["b@example.net"], MESSAGE)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await pool.close_all()
    return {
        "ms_per_mail": round(1000 * wall / mails, 3),
        "cpu_us_per_mail": round(1e6 * cpu / mails, 1),
        "sessions": pool.connections_opened,
    }


async def _run(args: argparse.Namespace, port: int, password: str, ca_file: Path) -> None:
    tasks: set[asyncio.Task[None]] = set()
    proxy = await _proxy(port, args.rtt_ms / 2000, tasks) if args.rtt_ms else None
    if proxy is not None:
        port = proxy.sockets[0].getsockname()[1]
    endpoint = Endpoint("127.0.0.1", port, TlsMode.STARTTLS)
    account = UpstreamAccount(endpoint, SINK_LOGIN, Secret(password), ca_file)
    try:
        figures = await _measure(account, args.mails)
    finally:
        if proxy is not None:
            proxy.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    mode = "stepwise" if args.stepwise else "pipelined"
    print(json.dumps({"mode": mode, "rtt_ms": args.rtt_ms, "mails": args.mails, **figures}))


def main() -> None:
    """Parse the options, start the sink, measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stepwise", action="store_true", help="hide PIPELINING from the pool")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="network round trip to add")
    parser.add_argument("--mails", type=int, default=3000, help="mails counted")
    args = parser.parse_args()
    if args.stepwise:
        _hide_pipelining()
    with tempfile.TemporaryDirectory() as temporary:
        tls = make_tls(Path(temporary) / "tls")
        with running_sink(tls, Path(temporary) / "sink.log") as sink:
            asyncio.run(_run(args, sink.port, sink.password, tls.ca_file))


if __name__ == "__main__":
    main()
