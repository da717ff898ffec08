"""Runs that are not a throughput workload: memory probes, the profile, and machine facts."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.loadgen import LoadSpec, parse_size
from benchmarks.postfix import find_postfix
from benchmarks.procstat import (
    memory_kib,
    open_files,
    open_files_limit,
    reset_peak,
    thread_cpu_seconds,
)
from benchmarks.services import (
    REPO,
    IdleConnections,
    run_loadgen,
    stop_process,
)

if TYPE_CHECKING:
    from benchmarks.run import Context, Settings

FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
SHORT_PATH = re.compile(
    r"^(?:.*/(?:site-packages|python3\.\d+)/|.*/(?=(?:relay|aiosmtpd|aiosmtplib)/))(?P<rest>.*)$"
)
WORKER_FRAME = "_worker (concurrent/futures/thread.py)"
TOP = 15


def idle_connections(ctx: Context, count: int) -> dict[str, Any]:
    """relay's RSS while it holds count authenticated, idle client connections."""
    with ctx.fresh_relay("idle", connections=count) as run:
        relay = run.process
        time.sleep(0.5)
        before = memory_kib(relay.pid, "VmRSS")
        spec = LoadSpec(target=run.target, idle=count, reply_timeout=15.0)
        holder = IdleConnections(spec, ctx.workdir / "loadgen-idle.log")
        try:
            ready = holder.ready()
            time.sleep(0.5)  # let the last sessions settle before reading memory
            rss = memory_kib(relay.pid, "VmRSS")
            fds = open_files(relay.pid)
            released = holder.release()
        finally:
            holder.stop()
        limit = open_files_limit(relay.pid)
        problems = relay.log_problems()
    held = max(int(ready["ready"]), 1)
    return {
        "connections": count,
        "authenticated": ready["ready"],
        "setup_seconds": ready["setup_seconds"],
        "failures": {**ready["failed"], **released["errors"]},
        "rss_before_mib": round(before / 1024, 1),
        "rss_mib": round(rss / 1024, 1),
        "growth_mib": round((rss - before) / 1024, 1),
        "kib_per_connection": round((rss - before) / held, 1),
        "relay_limits": {k: v for k, v in run.limits.items() if "connections" in k},
        "limits_raised_for_probe": run.raised,
        "relay_open_files": fds,
        "relay_open_files_soft_limit": limit,
        "server_log_problems": len(problems),
        "server_log_examples": problems[:3],
    }


def large_mail(ctx: Context, label: str, size: int) -> dict[str, Any]:
    """Peak RSS growth of a warmed-up relay while it forwards one mail of size bytes."""
    with ctx.fresh_relay("large") as run:
        relay, target = run.process, run.target
        # The first mail pays for imports, the TLS context and the database; not counted.
        run_loadgen(LoadSpec(target=target, size=2048, total_mails=1))
        before = memory_kib(relay.pid, "VmRSS")
        reset = reset_peak(relay.pid)
        ctx.sink.reset()
        result = run_loadgen(LoadSpec(target=target, size=size, total_mails=1))
        peak = memory_kib(relay.pid, "VmHWM")
        after = memory_kib(relay.pid, "VmRSS")
    growth = peak - before
    return {
        "size_label": label,
        "size_bytes": size,
        "accepted": result["accepted_total"],
        "delivered": ctx.sink.stats()["mails"],
        "latency_ms": result["latency_ms"],
        "errors": result["errors"],
        "rss_before_mib": round(before / 1024, 1),
        "peak_mib": round(peak / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "growth_mib": round(growth / 1024, 1),
        "growth_ratio": round(growth * 1024 / size, 2),
        "peak_reset": reset,  # False: the peak covers the warm-up mail too
    }


def profile(
    ctx: Context, settings: Settings, name: str, workload: tuple[str, str, int]
) -> dict[str, Any]:
    """py-spy samples of relay under one workload: where its CPU time goes."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    size, pattern, clients = workload
    raw = ctx.workdir / f"profile-{name}.txt"
    with ctx.fresh_relay("profile") as run:
        relay = run.process
        with (ctx.workdir / "py-spy.log").open("wb") as log:
            spy = subprocess.Popen(  # noqa: S603  (py-spy from PATH with a fixed argv)
                [
                    py_spy,
                    "record",
                    "-p",
                    str(relay.pid),
                    "-d",
                    str(int(settings.profile_seconds)),
                    "-r",
                    "100",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            time.sleep(1.0)  # py-spy attaches
            before = thread_cpu_seconds(relay.pid)
            run_loadgen(
                LoadSpec(
                    target=run.target,
                    clients=clients,
                    size=parse_size(size),
                    per_connection=1 if pattern == "one" else settings.per_connection,
                    warmup=settings.warmup,
                    duration=settings.profile_seconds - 2 * settings.warmup - 1.5,
                )
            )
            after = thread_cpu_seconds(relay.pid)
            spy.wait(timeout=settings.profile_seconds + 30)
        finally:
            stop_process(spy, deadline=5)
    if not raw.exists():
        why = (ctx.workdir / "py-spy.log").read_text(errors="replace")[-500:]
        return {"skipped": f"py-spy wrote nothing: {why}"}
    if settings.profile_path is not None:
        target = settings.profile_path
        shutil.copyfile(raw, target.with_name(f"{target.stem}-{name}{target.suffix}"))
    summary = summarise(raw.read_text())
    summary["workload"] = {"size": size, "pattern": pattern, "clients": clients}
    main_thread = str(relay.pid)
    summary["thread_cpu_seconds"] = {
        "event loop": round(after.get(main_thread, 0.0) - before.get(main_thread, 0.0), 2),
        "other threads": round(
            sum(v - before.get(k, 0.0) for k, v in after.items() if k != main_thread), 2
        ),
    }
    return summary


def summarise(collapsed: str) -> dict[str, Any]:
    """Self and inclusive shares per function, and self shares per component."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = in_workers = 0
    roots: list[str] | None = None
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        components[_component(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
        if any(frame.startswith(WORKER_FRAME) for frame in frames):
            in_workers += count  # asyncio.to_thread / run_in_executor: SQLite, scrypt
        else:
            # The frames every event-loop sample shares (main, asyncio.run, ...) say nothing.
            roots = frames if roots is None else _common_prefix(roots, frames)
    if not total:
        return {"samples": 0}
    for root in roots or []:
        inclusive.pop(root, None)

    def shares(counter: Counter[str], keep: int) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(keep)]

    ours = Counter(
        {
            name: n
            for name, n in inclusive.items()
            if _component(name) in ("relay", "aiosmtpd", "aiosmtplib")
        }
    )
    return {
        "samples": total,
        "worker_thread_percent": round(100 * in_workers / total, 1),
        "self_percent": shares(own, TOP),
        "inclusive_percent": shares(ours, TOP),
        "component_self_percent": shares(components, 20),
    }


def _common_prefix(first: list[str], second: list[str]) -> list[str]:
    common = []
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        common.append(a)
    return common


def _frame(frame: str) -> str:
    """'name (/long/path/pkg/mod.py:12)' -> 'name (pkg/mod.py)'."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    short = SHORT_PATH.match(path)
    return f"{match['name']} ({short['rest'] if short else path})"


def _component(frame: str) -> str:
    path = frame.rsplit("(", 1)[-1]
    for prefix in (
        "relay/",
        "aiosmtpd/",
        "aiosmtplib/",
        "asyncio/",
        "logging/",
        "sqlite3/",
        "cryptography/",
        "email/",
        "ssl.py",
        "selectors.py",
        "socket.py",
    ):
        if path.startswith(prefix):
            return prefix.rstrip("/").removesuffix(".py")
    return "other"


def profile_lines(summary: dict[str, Any]) -> list[str]:
    """The profile summary as text."""
    if "skipped" in summary:
        return [f"profile skipped: {summary['skipped']}"]
    workload = summary["workload"]
    lines = [
        f"relay profile, {workload['size']} mails, {workload['clients']} clients, "
        f"{workload['pattern']} mail(s) per connection ({summary['samples']} py-spy samples):"
    ]
    lines.append(
        "  CPU by component (self time): "
        + ", ".join(f"{name} {share}%" for name, share in summary["component_self_percent"])
    )
    lines.append(f"  samples in worker threads (SQLite spool): {summary['worker_thread_percent']}%")
    threads = summary.get("thread_cpu_seconds")
    if threads:
        lines.append(
            "  relay CPU seconds by thread while profiled: "
            + ", ".join(f"{name} {seconds}" for name, seconds in threads.items())
        )
    lines.append("  top functions by self time:")
    lines += [f"    {share:5.1f}%  {name}" for name, share in summary["self_percent"]]
    lines.append("  top relay/aiosmtpd/aiosmtplib functions by inclusive time (below the loop):")
    lines += [f"    {share:5.1f}%  {name}" for name, share in summary["inclusive_percent"]]
    return lines


def machine(argv: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Where and when the run happened, and with which versions."""
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        "0",
    )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions: dict[str, str | None] = {}
    for package in ("relay", "aiosmtpd", "aiosmtplib", "cryptography"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(argv[1:]),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_mib": int(memory) // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "postfix": _postfix_version(),
        "relay_commit": _git("rev-parse", "--short", "HEAD"),
        "relay_tree_changed": bool(_git("status", "--porcelain", "relay")),
        "load_average_at_start": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
    }


def _postfix_version() -> str | None:
    postfix = find_postfix()
    if postfix is None:
        return None
    postconf = Path(postfix).with_name("postconf")
    done = subprocess.run(  # noqa: S603  (postconf next to postfix, fixed argv)
        [str(postconf), "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def _git(*args: str) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    done = subprocess.run(  # noqa: S603  (read-only git query, fixed argv)
        [git, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()
