"""Run relay's benchmarks: the same workloads direct to the sink, through relay, through Postfix.

    python -m benchmarks.run [--smoke] [--json PATH] [--modes direct,relay,postfix]
                             [--clients 1,10,50] [--sizes 2k,100k,10m] [--duration S]

Everything it starts (sink, relay, Postfix, load generators, py-spy) runs as its own process
and is stopped in `finally`; the temporary directory is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks import probes, report
from benchmarks.loadgen import LoadSpec, parse_size
from benchmarks.postfix import PostfixProcess, postfix_unavailable, running_postfix
from benchmarks.procstat import memory_kib, tree_pss_kib
from benchmarks.services import (
    RELAY_LOGIN,
    REPO,
    SINK_LOGIN,
    RelayProcess,
    SinkProcess,
    TlsFiles,
    make_tls,
    prepare_relay,
    relay_resolved_config,
    run_loadgen,
    running_relay,
    running_sink,
    snapshot_relay,
)
from benchmarks.smtpclient import Target

# direct-plain: the load generator to the sink with AUTH and no TLS, what a local SMTP round
# trip costs with nothing behind it (the limit). direct: the app straight to the provider, TLS
# and AUTH. relay: relay at its default config (spool mode, info logs). relay-verdict: the
# app waits for the provider's verdict. postfix: Postfix as a smarthost.
MODES = ("direct-plain", "direct", "relay", "relay-verdict", "postfix")
RELAY_MODES: dict[str, tuple[tuple[str, Any], ...]] = {
    "relay": (),
    "relay-verdict": (("listen.0.reply", "verdict"),),
}
PATTERNS = {"one": 1, "many": 100}
# relay's own limits on client connections; the idle probe holds more than their defaults.
CONNECTION_LIMITS = ("max_connections", "max_connections_per_ip")
MIN_WINDOW_MAILS = 10
DRAIN_TIMEOUT = {
    "direct-plain": 10.0,
    "direct": 10.0,
    "relay": 180.0,  # spool mode takes mail faster than a distant provider answers
    "relay-verdict": 30.0,
    "postfix": 180.0,
}
MIB_KIB = 1024


@dataclass(frozen=True)
class Settings:
    """What to run, from the command line."""

    modes: tuple[str, ...]
    clients: tuple[int, ...]
    sizes: tuple[str, ...]
    patterns: tuple[str, ...]
    duration: float
    warmup: float
    per_connection: int
    max_window_mails: int
    idle_connections: int
    large_size: str
    info_run: bool
    profile: bool
    profile_path: Path | None
    profile_seconds: float
    relay_overrides: tuple[tuple[str, Any], ...]
    relay_rev: str | None
    delays_ms: tuple[int, ...] = (0,)  # the provider's delay before its 250 to DATA


@dataclass
class Context:
    """What stays up for the whole run."""

    workdir: Path
    tls: TlsFiles
    sink: SinkProcess
    postfix: PostfixProcess | None
    relay_overrides: tuple[tuple[str, Any], ...] = ()
    relay_source: Path = REPO
    runs_started: int = 0

    @contextmanager
    def fresh_relay(
        self,
        name: str,
        level: str | None = None,
        connections: int = 0,
        extra: tuple[tuple[str, Any], ...] = (),
    ) -> Iterator[RelayRun]:
        """A relay with its own new state directory (empty spool), removed afterwards.

        With connections > 0, relay's connection limits (where this relay has them) are
        raised to let that many clients in from 127.0.0.1.
        """
        self.runs_started += 1
        root = self.workdir / f"relay-{self.runs_started}-{name}"
        try:
            overrides = (*extra, *self.relay_overrides)
            setup = prepare_relay(root, self.sink, self.tls.ca_file, overrides, self.relay_source)
            limits = relay_resolved_config(setup).get("limits", {})
            raised = {
                f"limits.{key}": connections + 100
                for key in CONNECTION_LIMITS
                if connections and key in limits and limits[key] < connections + 100
            }
            setup = replace(setup, overrides=(*setup.overrides, *raised.items()))
            with running_relay(setup, root / "relay.log", level) as relay:
                target = Target("127.0.0.1", relay.port, login=RELAY_LOGIN, password=setup.secret)
                yield RelayRun(relay, target, limits, raised)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class RelayRun:
    """A running relay, how the load generator logs in to it, and its limits."""

    process: RelayProcess
    target: Target
    limits: dict[str, Any]  # the limits section as relay resolved it, before any raise
    raised: dict[str, Any]  # what the benchmark raised for this run


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a quick run to check it all works")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--modes", help="comma-separated: direct,relay,postfix (default all)")
    parser.add_argument("--clients", help="concurrent clients (default 1,10,50)")
    parser.add_argument("--sizes", help="mail sizes (default 2k,100k,10m)")
    parser.add_argument("--patterns", help="one (mail per connection), many (default both)")
    parser.add_argument("--duration", type=float, help="counted seconds per run (default 4)")
    parser.add_argument(
        "--delays",
        help="the provider's delay before its 250 to DATA, in ms (default 0,300; smoke 0)",
    )
    parser.add_argument("--warmup", type=float, help="minimum warm-up seconds (default 1)")
    parser.add_argument("--per-connection", type=int, help="mails per connection for 'many'")
    parser.add_argument("--idle-connections", type=int, help="idle probe size (default 1000)")
    parser.add_argument(
        "--profile", type=Path, help="also keep py-spy's collapsed stacks (PATH-NAME.txt)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--relay-rev",
        metavar="REV",
        help="benchmark relay/ as committed at REV (e.g. HEAD), not the working tree",
    )
    parser.add_argument(
        "--relay-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of relay's config, e.g. queue.max_connections_per_user=8",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Defaults for a full or a smoke run, overridden by whatever was given."""
    smoke = bool(args.smoke)

    def pick(given: str | None, default: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in (given or default).split(",") if part.strip())

    modes = pick(args.modes, ",".join(MODES))
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(unknown)} (known: {', '.join(MODES)})")
    patterns = pick(args.patterns, "one,many")
    if set(patterns) - set(PATTERNS):
        raise SystemExit("--patterns takes one and/or many")
    return Settings(
        modes=modes,
        clients=tuple(int(c) for c in pick(args.clients, "1,10" if smoke else "1,10,50")),
        sizes=pick(args.sizes, "2k" if smoke else "2k,100k,10m"),
        patterns=patterns,
        duration=args.duration or (1.0 if smoke else 4.0),
        warmup=args.warmup if args.warmup is not None else (0.3 if smoke else 1.0),
        per_connection=args.per_connection or (10 if smoke else PATTERNS["many"]),
        max_window_mails=100 if smoke else 0,
        idle_connections=args.idle_connections or (50 if smoke else 1000),
        large_size="1m" if smoke else "10m",
        info_run=not smoke,
        profile=not smoke and not args.no_profile,
        profile_path=args.profile,
        profile_seconds=10.0,
        relay_overrides=tuple(_override(item) for item in args.relay_set),
        relay_rev=args.relay_rev,
        delays_ms=tuple(int(d) for d in pick(args.delays, "0" if smoke else "0,300")),
    )


def _override(item: str) -> tuple[str, Any]:
    dotted, sep, value = item.partition("=")
    if not sep or not dotted:
        raise SystemExit(f"--relay-set takes KEY=VALUE, got {item!r}")
    return dotted.strip(), yaml.safe_load(value)


def workloads(settings: Settings) -> Iterator[tuple[str, str, int, int]]:
    """(size, pattern, clients, delay ms) in run order: everything with an instant provider,
    the headline workloads with each slower one; a 10 MB mail gains nothing from reuse."""
    for delay in settings.delays_ms:
        for size in settings.sizes if not delay else (report.HEADLINE[0],):
            for pattern in settings.patterns if not delay else ("one",):
                if pattern == "many" and parse_size(size) >= 1 << 20 and len(settings.patterns) > 1:
                    continue
                for clients in settings.clients:
                    yield size, pattern, clients, delay


def measure(
    ctx: Context,
    settings: Settings,
    mode: str,
    workload: tuple[str, str, int, int],
    level: str = "",
) -> dict[str, Any]:
    """Run one workload in one mode and return its record."""
    size, pattern, clients, delay = workload
    ctx.sink.reset()
    ctx.sink.set_delay(delay)
    spec = LoadSpec(
        target=Target("127.0.0.1", 0),
        clients=clients,
        size=parse_size(size),
        per_connection=1 if pattern == "one" else settings.per_connection,
        warmup=settings.warmup,
        duration=settings.duration,
        max_window_mails=settings.max_window_mails,
        min_window_mails=0 if settings.max_window_mails else max(MIN_WINDOW_MAILS, clients),
        watch={"sink": (ctx.sink.pid, False)},
    )
    record: dict[str, Any] = {"mode": mode + (f"@{level}" if level else "")}
    record.update(size=size, pattern=pattern, clients=clients, per_connection=spec.per_connection)
    record["delay_ms"] = delay
    with _server(ctx, mode, level, record) as (target, watch):
        spec = replace(spec, target=target, watch={**spec.watch, **watch})
        result = run_loadgen(spec)
        stats, drained = ctx.sink.wait_for(result["accepted_total"], DRAIN_TIMEOUT[mode])
        ctx.sink.set_delay(0)  # the next relay's start-up check must not wait on it
        window = result["window"]
        inside = ctx.sink.stats(window["start"], window["end"])["window_mails"]
        if "server" in watch:
            pid, tree = watch["server"]
            if tree:
                # Postfix is many processes sharing libraries: summed RSS would count them
                # over and over, so its memory is the PSS of the tree at the end of the run.
                record["server_pss_mib"] = round(tree_pss_kib(pid) / MIB_KIB, 1)
            else:
                record["server_peak_rss_mib"] = round(memory_kib(pid, "VmHWM") / MIB_KIB, 1)
    record.update(
        window_seconds=round(window["seconds"], 3),
        accepted_window=result["accepted_window"],
        delivered_window=inside,
        accepted_total=result["accepted_total"],
        delivered_total=stats["mails"],
        drain_seconds=round(drained, 3),
        sink_tls_sessions=stats["tls_sessions"],
        sink_logins=stats["logins"],
        latency_ms=result["latency_ms"],
        errors=result["errors"],
        error_examples=result["error_examples"],
        replies=result["replies"],
        cpu_seconds=result["cpu_seconds"],
        aborted_clients=result["aborted_clients"],
        warm=result["warm"],
    )
    record.update(report.figures(record))
    return record


@contextmanager
def _server(
    ctx: Context, mode: str, level: str, record: dict[str, Any]
) -> Iterator[tuple[Target, dict[str, tuple[int, bool]]]]:
    """The target and the processes to watch for one mode; a fresh relay for each run."""
    if mode == "direct-plain":
        target = Target(
            "127.0.0.1", ctx.sink.plain_port, login=SINK_LOGIN, password=ctx.sink.password
        )
        yield target, {}
    elif mode == "direct":
        target = Target(
            "127.0.0.1",
            ctx.sink.port,
            starttls=True,
            ca_file=str(ctx.tls.ca_file),
            server_name="127.0.0.1",
            login=SINK_LOGIN,
            password=ctx.sink.password,
        )
        yield target, {}
    elif mode == "postfix":
        if ctx.postfix is None:
            raise RuntimeError("postfix mode without a running Postfix")
        yield Target("127.0.0.1", ctx.postfix.port), {"server": (ctx.postfix.pid, True)}
    else:
        with ctx.fresh_relay(mode, level or None, extra=RELAY_MODES[mode]) as relay:
            pid = relay.process.pid
            record["server_start_rss_mib"] = round(memory_kib(pid, "VmRSS") / MIB_KIB, 1)
            yield relay.target, {"server": (pid, False)}
            problems = relay.process.log_problems()
        record["server_log_problems"] = len(problems)
        record["server_log_examples"] = problems[:3]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the headline; write JSON if asked."""
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    # A SIGTERM ends the run through the finally blocks, so nothing started is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    result: dict[str, Any] = {"meta": probes.machine(sys.argv, settings.__dict__), "runs": []}
    skipped: dict[str, str] = {}
    modes = settings.modes
    if "postfix" in modes and (why := postfix_unavailable()) is not None:
        skipped["postfix"] = why
        modes = tuple(m for m in modes if m != "postfix")
    result["skipped"] = skipped
    # Postfix's unprivileged processes must enter the directory: not mkdtemp's 0700.
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    result["meta"]["workdir"] = str(workdir)
    try:
        workdir.chmod(0o755)
        with ExitStack() as stack:
            tls = make_tls(workdir / "tls")
            sink = stack.enter_context(running_sink(tls, workdir / "sink.log"))
            postfix = (
                stack.enter_context(
                    running_postfix(
                        workdir / "postfix", sink.port, tls.ca_file, SINK_LOGIN, sink.password
                    )
                )
                if "postfix" in modes
                else None
            )
            ctx = Context(workdir, tls, sink, postfix, settings.relay_overrides)
            if settings.relay_rev:
                ctx.relay_source = workdir / "relay-src"
                commit = snapshot_relay(settings.relay_rev, ctx.relay_source)
                result["meta"]["relay_source"] = f"{settings.relay_rev} ({commit[:12]})"
            else:
                result["meta"]["relay_source"] = "working tree"
            _run_all(ctx, settings, modes, result)
    except Exception as error:
        # Keep what was measured before the failure; the traceback follows.
        result["failed"] = f"{type(error).__name__}: {error}"[:2000]
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        result["ratios"] = report.ratios(result["runs"])
        result["meta"]["seconds"] = round(time.monotonic() - started, 1)
        _print(result)
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _run_all(ctx: Context, settings: Settings, modes: tuple[str, ...], out: dict[str, Any]) -> None:
    for workload in workloads(settings):
        for mode in modes:
            run = measure(ctx, settings, mode, workload)
            out["runs"].append(run)
            print(report.table([run])[-1], flush=True)
    if "relay" not in modes:
        return
    headline = (*report.HEADLINE, 0)
    if settings.info_run:
        # The headline runs relay at its default level (info); this shows what logs cost.
        out["runs"].append(measure(ctx, settings, "relay", headline, level="warning"))
    out["memory"] = {
        "idle": probes.idle_connections(ctx, settings.idle_connections),
        "large": probes.large_mail(ctx, settings.large_size, parse_size(settings.large_size)),
    }
    if settings.profile:
        out["profile"] = {
            "headline": probes.profile(ctx, settings, "headline", report.HEADLINE),
            "large": probes.profile(ctx, settings, "large", (settings.large_size, "one", 1)),
        }


def _print(result: dict[str, Any]) -> None:
    if "failed" in result:
        print(f"\nthe run failed: {result['failed']}; figures so far:")
    print()
    print("\n".join(report.table(result["runs"])))
    print()
    print("relay versus the baselines, per workload:")
    print("\n".join(report.ratio_lines(result["ratios"])))
    for mode, why in result["skipped"].items():
        print(f"skipped {mode}: {why}")
    print()
    print("\n".join(report.headline(result)))
    for summary in result.get("profile", {}).values():
        print()
        print("\n".join(probes.profile_lines(summary)))


if __name__ == "__main__":
    sys.exit(main())
