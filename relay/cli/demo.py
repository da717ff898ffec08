"""`relay demo`: a first run in one command, a directory with relay and its web page, one invite.

It writes a small config.yaml in a directory of its own (state, key and spool beside it), with
SMTP and the enrollment page on loopback, invites the newcomer, prints where to go, and serves.
Run again in the same directory, it keeps what is there and serves it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from relay.cli.common import UsageError, checked_email, open_store
from relay.cli.invite import invitation, page_url
from relay.config.load import load_config
from relay.daemon import run_daemon
from relay.providers.presets import PRESETS, address_domain
from relay.queue.admin import create_queue
from relay.state.keys import create_key_file
from relay.state.store import Store

DEMO_DIR = "relay-demo"
SMTP_PORT = 2525
WEB_PORT = 8025
PROVIDER = "mail"  # the one provider the demo's config names


def add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `relay demo`."""
    demo = commands.add_parser(
        "demo", help="first run: relay and its web page on loopback, and a link for you"
    )
    demo.add_argument("--email", required=True, help="your address at your mail provider")
    presets = ", ".join(sorted(PRESETS))
    demo.add_argument("--provider", help=f"your provider's preset ({presets})")
    demo.add_argument("--dir", type=Path, default=Path(DEMO_DIR), help="where relay keeps it all")
    demo.add_argument("--smtp-port", type=int, default=SMTP_PORT, help="for your apps (2525)")
    demo.add_argument("--web-port", type=int, default=WEB_PORT, help="for the page (8025)")
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up the directory if new, invite the user, print the links, serve until stopped."""
    email = checked_email(args.email, "--email")
    directory: Path = args.dir.absolute()
    config_path = directory / "config.yaml"
    if not config_path.exists():
        preset = args.provider or _preset_for(email)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        config_path.write_text(_config_text(preset, args.smtp_port, args.web_port))
    config = load_config(config_path)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    Store.create(config.database_path).close()
    create_queue(config.spool_path)
    if not config.key_file.exists():
        create_key_file(config.key_file)
    login = _login_for(email)
    with open_store(config) as (store, _):
        user = store.find_user(login)
        enrolled = user is not None and user.enabled
    print(f"relay demo in {directory} (config {config_path})")
    print(f"  your apps: SMTP server 127.0.0.1, port {config.listen[0].port}, no encryption")
    print(f"  the page:  {page_url(config)}")
    if enrolled:
        print(f"  {login} has connected their mailbox: the page shows their app login")
    else:
        link = invitation(config, login, PROVIDER if user is None else None, email)
        print(f"  open this link to connect {email} (it works once): {link}")
    print("  stop with Ctrl-C; run `relay demo` here again to carry on", flush=True)
    os.environ["RELAY_CONFIG"] = str(config_path)  # for `relay status` in this shell's children
    run_daemon(config, os.environ)
    return 0


def _preset_for(email: str) -> str:
    domain = address_domain(email)
    found = [name for name, preset in PRESETS.items() if domain in preset.domains]
    if len(found) == 1:
        return found[0]
    presets = ", ".join(sorted(PRESETS))
    raise UsageError(f"--provider: name your provider's preset for {email} ({presets})")


def _login_for(email: str) -> str:
    local = email.split("@", 1)[0].lower()
    login = "".join(c if c.isalnum() or c in "._-" else "-" for c in local).strip(".-_")
    return login[:64] or "me"


def _config_text(preset: str, smtp_port: int, web_port: int) -> str:
    if preset not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise UsageError(f"--provider: unknown preset {preset!r} (known: {known})")
    document: dict[str, Any] = {
        "listen": [{"address": "127.0.0.1", "port": smtp_port}],
        "state_dir": "./state",
        "key_file": "./relay.key",
        "web": {"enabled": True, "address": "127.0.0.1", "port": web_port},
        "providers": {PROVIDER: {"preset": preset}},
    }
    header = (
        "# Written by `relay demo`: relay on loopback with its enrollment page.\n"
        "# Every key is explained in config.example.yaml; `relay config check` validates.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)
