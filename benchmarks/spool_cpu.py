"""Spool CPU per mail: enqueue a 2 KB one-recipient mail, record its delivered first attempt.

Run: PYTHONPATH=. python3 -m benchmarks.spool_cpu [N] [CONCURRENCY] [--deferred-backlog K]
Reports the spool writer thread's CPU (time.thread_time on that thread) and the whole
process's CPU (getrusage), in µs per mail.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from relay.queue.records import AttemptRecord, NewMessage
from relay.queue.spool import Spool, fingerprint
from relay.reply import Reply

OK = Reply(250, "2.0.0", "OK queued as 1234")
BODY = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: bench\r\n\r\n" + b"x" * 1950


def message(n: int) -> NewMessage:
    mid = f"{n:016x}"
    return NewMessage(
        id=mid,
        login="alice",
        sender="alice@example.org",
        message_id=f"<{mid}@example.org>",
        recipients=("bob@example.net",),
        upstream_data=BODY,
        body_offset=60,
        sent_header=BODY[:60],
        received_at=time.time(),
        fingerprint=fingerprint("alice", mid, "alice@example.org", ["bob@example.net"]),
    )


async def one(spool: Spool, n: int) -> None:
    new = message(n)
    if await spool.enqueue(new, 600.0) != new.id:
        raise SystemExit(f"mail {n} was taken for a duplicate")
    attempt = AttemptRecord({"bob@example.net": OK}, {}, {}, "250 2.0.0 OK", time.time() + 60)
    entry = await spool.record(new.id, attempt)
    if entry is None or not entry.removed:
        raise SystemExit(f"mail {n} is still queued after its delivered attempt")


async def backlog(spool: Spool, count: int) -> None:
    later = Reply(451, "4.3.0", "later")
    for n in range(count):
        new = message(10**9 + n)
        await spool.enqueue(new, 600.0)
        for _ in range(3):
            attempt = AttemptRecord({}, {}, {"bob@example.net": later}, "451", time.time() + 3600)
            await spool.record(new.id, attempt)


async def main(n: int, concurrency: int, deferred: int) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        spool = Spool.open(Path(tmp) / "spool.db")
        try:
            await backlog(spool, deferred)
            for warm in range(50):
                await one(spool, 10**8 + warm)

            def thread_cpu() -> float:
                return spool._executor.submit(time.thread_time).result()

            t0, r0, w0 = thread_cpu(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            queue = iter(range(n))

            async def worker() -> None:
                for i in queue:
                    await one(spool, i)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            t1, r1, w1 = thread_cpu(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        finally:
            spool.close()
    process = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(
        f"n={n} concurrency={concurrency} deferred_backlog={deferred}: "
        f"spool thread {1e6 * (t1 - t0) / n:.1f} µs CPU/mail, "
        f"process {1e6 * process / n:.1f} µs CPU/mail, wall {1e3 * (w1 - w0) / n:.2f} ms/mail"
    )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    backlog_size = 0
    if "--deferred-backlog" in sys.argv:
        backlog_size = int(sys.argv[sys.argv.index("--deferred-backlog") + 1])
        args.remove(str(backlog_size))
    count = int(args[0]) if args else 2000
    parallel = int(args[1]) if len(args) > 1 else 1
    asyncio.run(main(count, parallel, backlog_size))
