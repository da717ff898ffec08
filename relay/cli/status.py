"""`relay status`: one screen for a person, from the running daemon or from the state dir."""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

from relay.cli.common import USER_STATES, organisation_user, user_state
from relay.config.load import config_path_from, load_config
from relay.config.model import RelayConfig
from relay.oauth.orgstatus import failing_lines
from relay.ops.status import read_delivery, read_status, uptime
from relay.queue.admin import open_queue_admin
from relay.state.notices import NoticeRecord
from relay.state.store import Store


def add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `relay status`."""
    commands.add_parser(
        "status", help="one-screen summary of the daemon, queue and users"
    ).set_defaults(run=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the summary; works whether or not the daemon runs."""
    config = load_config(config_path_from(args.config, os.environ))
    for line in status_lines(config, time.time()):
        print(line)
    return 0


def status_lines(config: RelayConfig, now: float) -> list[str]:
    """The lines of the summary."""
    lines = [_daemon_line(config)]
    store = Store.open(config.database_path)
    try:
        users = store.list_users()
        checks = store.last_checks()
        notices = store.notices.all()
        states = {
            user.login: user_state(
                user, store.grants.get(user.login), organisation_user(config, user)
            )
            for user in users
        }
    finally:
        store.close()
    with open_queue_admin(config.spool_path) as queue:
        stats = queue.stats(now)
        per_user = queue.user_status()
        queued_by_user = queue.queued_by_user()
    counts = Counter(states.values())
    shown = [state for state in USER_STATES if counts[state] or state in ("enabled", "disabled")]
    lines.append("users: " + ", ".join(f"{counts[state]} {state}" for state in shown))
    oldest = f", oldest {_age(stats.oldest_age())}" if stats.queued else ""
    lines.append(
        f"queue: {stats.queued} queued ({stats.deferred} deferred){oldest}; "
        f"{stats.sent_copies} Sent copies pending"
    )
    lines.append("")
    heading = f"{'USER':<16} {'STATE':<15} {'QUEUED':>6}  {'LAST SENT':<16}  {'LAST CHECK':<27}"
    lines.append(heading + "  LAST ERROR")
    for user in users:
        status = per_user.get(user.login)
        sent = _when(status.last_delivered_at if status else None)
        error = "-"
        if (
            status
            and status.last_error
            and (status.last_error_at or 0) >= (status.last_delivered_at or 0)
        ):
            error = f"{_when(status.last_error_at)} {status.last_error}"
        state = states[user.login]
        queued = queued_by_user.get(user.login, 0)
        check = checks.get(user.login)
        checked = "-"
        if check is not None:
            verdict = "pass" if check.passed else f"fail: {check.failed_stage}"
            checked = f"{_when(check.checked_at)} {verdict}"
        lines.append(
            f"{user.login:<16} {state:<15} {queued:>6}  {sent:<16}  {checked:<27}  {error}"[:200]
        )
    lines += _delivery_lines(config)
    lines += _notice_lines(notices)
    running = read_status(config.state_dir)
    if running is not None:
        lines += failing_lines(config.state_dir, running.pid)
    return lines


def _delivery_lines(config: RelayConfig) -> list[str]:
    """Per user the daemon is sending for: sessions, pace, and why mail waits."""
    if read_status(config.state_dir) is None:
        return []
    users = read_delivery(config.state_dir)
    if not users:
        return []
    lines = ["", f"{'DELIVERY':<16} {'SESSIONS':<12} {'PACE':<36}  WAITING"]
    for user in users:
        sessions = f"{user['sessions']}/{user['limit']}"
        if user["limit"] < user["ceiling"]:
            sessions += f" (of {user['ceiling']})"
        waiting = user["waiting"] or "-"
        if user["waiting_sends"]:
            waiting += f"; {user['waiting_sends']} sends waiting for a session"
        lines.append(f"{user['login']:<16} {sessions:<12} {user['pace']:<36}  {waiting}"[:200])
    return lines


def _notice_lines(notices: list[NoticeRecord]) -> list[str]:
    """Who relay told their login stopped working, when, why and where it wrote."""
    if not notices:
        return []
    lines = [
        "",
        "renewal notices:",
        f"{'USER':<16} {'TOLD':<16}  {'REASON':<16}  {'SENT TO':<30}  SAID",
    ]
    for notice in notices:
        lines.append(
            f"{notice.login:<16} {_when(notice.notified_at):<16}  {notice.reason:<16}  "
            f"{notice.sent_to:<30}  {notice.detail}"[:200]
        )
    return lines


def _daemon_line(config: RelayConfig) -> str:
    running = read_status(config.state_dir)
    if running is None:
        return f"relay: not running (figures below are from {config.state_dir})"
    listening = ", ".join(f"{address}:{port}" for address, port in running.listening)
    metrics = f"; metrics on port {running.metrics_port}" if running.metrics_port else ""
    line = (
        f"relay: running (pid {running.pid}, up {_age(uptime(running.started))}), "
        f"listening on {listening}{metrics}"
    )
    if running.paused_since is not None:
        line += (
            f"\nDELIVERY PAUSED for {_age(time.time() - running.paused_since)}: "
            f"{running.pause_reason}; new mail gets 452 4.3.1 until the spool can be written"
        )
    return line


def _age(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
