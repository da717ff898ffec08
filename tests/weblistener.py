"""The web listener alone, in the test's own event loop: for page tests that need no browser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from relay.config.live import LiveConfig
from relay.config.load import load_config
from relay.model import User
from relay.state.keys import create_key_file
from relay.state.store import Store
from relay.web.server import WebServer


@asynccontextmanager
async def listening_pages(
    root: Path, providers: dict[str, Any], *users: User
) -> AsyncIterator[tuple[str, Store]]:
    """The pages on a free loopback port over a fresh state dir holding users; base URL, store."""
    document = {
        "state_dir": "state",
        "key_file": "relay.key",
        "providers": providers,
        "web": {"enabled": True, "port": 0},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(document))
    config = load_config(root / "config.yaml")
    config.state_dir.mkdir()
    create_key_file(config.key_file)
    store = Store.create(config.database_path)
    for user in users:
        store.add_user(user)
    server = WebServer(LiveConfig(config), store, {}, list)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", store
    finally:
        await server.stop()
        store.close()
