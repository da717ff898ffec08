"""The benchmark's smoke run: it starts everything, measures each mode and reports sane figures.

No timing is asserted: the figures depend on the machine. What is checked is that the run
completes, that its JSON has every figure for every mode, that relay delivered exactly what it
accepted, and that nothing it started is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# Postfix is optional, and the full run adds it and relay-verdict, and a provider 300 ms away.
MODES = ("direct-plain", "direct", "relay")
SMOKE_CLIENTS = {1, 10}
RUN_FIGURES = (
    "accepted_per_s",
    "delivered_per_s",
    "accepted_window",
    "delivered_window",
    "accepted_total",
    "delivered_total",
    "window_seconds",
    "server_cpu_s_per_1000",
    "sink_cpu_s_per_1000",
)


@dataclass(frozen=True)
class SmokeRun:
    """What one `python -m benchmarks.run --smoke` printed and wrote."""

    out: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """Run the smoke benchmark once for the whole module."""
    json_path = tmp_path_factory.mktemp("benchmarks") / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--modes", ",".join(MODES)]
        + ["--json", str(json_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return SmokeRun(done.stdout, json.loads(json_path.read_text()))


def _runs(report: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    return [run for run in report["runs"] if run["mode"] == mode]


def test_smoke_measures_every_mode_at_one_and_ten_clients(smoke: SmokeRun) -> None:
    for mode in MODES:
        runs = _runs(smoke.report, mode)
        assert {run["clients"] for run in runs} == SMOKE_CLIENTS, mode
        for run in runs:
            missing = [name for name in RUN_FIGURES if name not in run]
            assert not missing, (mode, missing)
            assert run["accepted_total"] > 0, run
            assert run["size"] == "2k"


def test_every_run_has_ordered_latency_percentiles(smoke: SmokeRun) -> None:
    for run in smoke.report["runs"]:
        latency = run["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"], run


def test_relay_delivers_to_the_sink_exactly_what_it_accepted(smoke: SmokeRun) -> None:
    for run in _runs(smoke.report, "relay"):
        assert run["errors"] == {}, run["error_examples"]
        assert run["delivered_total"] == run["accepted_total"], run
        assert run["server_peak_rss_mib"] > 0
        assert run["server_cpu_s_per_1000"] is not None


def test_direct_modes_count_at_the_sink_what_the_generator_sent(smoke: SmokeRun) -> None:
    for mode in ("direct", "direct-plain"):
        for run in _runs(smoke.report, mode):
            assert run["delivered_total"] == run["accepted_total"], run
            assert run["errors"] == {}, run["error_examples"]


def test_ratios_compare_relay_with_direct_per_workload(smoke: SmokeRun) -> None:
    rows = smoke.report["ratios"]
    assert {row["clients"] for row in rows} == SMOKE_CLIENTS
    for row in rows:
        assert row["mode"] == "relay" and row["delay_ms"] == 0
        assert row["delivered_vs_direct"] > 0 and row["delivered_vs_plain"] > 0
        assert isinstance(row["added_p99_ms_vs_direct"], float)


def test_memory_probes_report_idle_connections_and_one_large_mail(smoke: SmokeRun) -> None:
    idle = smoke.report["memory"]["idle"]
    assert idle["authenticated"] == idle["connections"] > 0
    assert idle["rss_mib"] > 0
    large = smoke.report["memory"]["large"]
    assert large["accepted"] == large["delivered"] == 1
    assert large["peak_mib"] >= large["rss_before_mib"] > 0


def test_output_has_the_table_and_the_headline(smoke: SmokeRun) -> None:
    assert "accept/s" in smoke.out
    assert "relay delivered / direct delivered:" in smoke.out
    assert "relay p99 - direct p99 (ms):" in smoke.out


def test_run_records_machine_and_removes_its_directory(smoke: SmokeRun) -> None:
    meta = smoke.report["meta"]
    assert meta["cores"] >= 1 and meta["memory_mib"] > 0
    assert meta["command"].startswith("python -m benchmarks.run --smoke")
    assert not Path(meta["workdir"]).exists()
