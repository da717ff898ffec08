"""The daemon's writes to the store, made off the event loop on a connection of their own.

A write waits up to the store's busy timeout while another process holds SQLite's write lock
(a `relay user ...` command mid-transaction) and then fsyncs: on the event loop either would
stall every SMTP session. Reads stay on the loop; they never wait for a lock in WAL mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from relay.state.store import Store

R = TypeVar("R")


class StoreWriter:
    """Runs store writes one at a time in a thread that owns its own connection."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-store")
        self._store: Store | None = None  # opened in the writer's thread, at the first write

    async def run(self, write: Callable[[Store], R]) -> R:
        """Run write on the writer's store and return its result, without blocking the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._write, write)

    def _write(self, write: Callable[[Store], R]) -> R:
        if self._store is None:
            self._store = Store.open(self._path)
        return write(self._store)

    def close(self) -> None:
        """Finish the writes under way and close the connection."""
        self._executor.submit(self._close).result()
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


async def write_to(store: Store, writer: StoreWriter | None, write: Callable[[Store], R]) -> R:
    """Write through the daemon's writer, or straight to store where there is none (the CLI)."""
    if writer is None:
        return write(store)
    return await writer.run(write)
