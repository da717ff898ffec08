"""Prometheus metrics: what is counted, and the /metrics endpoint a scraper reads."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from relay.ops.metrics import Metrics, MetricsServer, reply_class


@pytest_asyncio.fixture
async def served() -> AsyncIterator[MetricsServer]:
    """A metrics server on 127.0.0.1 with an OS-chosen port, always stopped."""
    server = MetricsServer(Metrics())
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


def fetch(
    port: int, path: str = "/metrics", method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One real HTTP request: status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


async def scrape(
    server: MetricsServer,
    path: str = "/metrics",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    assert server.port is not None
    return await asyncio.to_thread(fetch, server.port, path, method, headers)


async def test_counters_and_labels_appear_in_a_real_scrape(served: MetricsServer) -> None:
    metrics = served.metrics
    metrics.session_opened()
    metrics.session_opened()
    metrics.auth_failed()
    metrics.mail_accepted("alice", "agency")
    metrics.mail_delivered("alice", "agency")
    metrics.mail_deferred("bob", "lab")
    metrics.mail_bounced("bob", "lab")
    metrics.upstream_reply("agency", 250)
    metrics.upstream_reply("lab", 451)
    metrics.upstream_reply("lab", None)
    metrics.sent_copy_failed("lab")
    metrics.oauth_refresh_failed("agency")
    status, headers, body = await scrape(served)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = body.splitlines()
    for expected in (
        "relay_sessions_total 2.0",
        "relay_auth_failures_total 1.0",
        'relay_mails_accepted_total{provider="agency",user="alice"} 1.0',
        'relay_mails_delivered_total{provider="agency",user="alice"} 1.0',
        'relay_mails_deferred_total{provider="lab",user="bob"} 1.0',
        'relay_mails_bounced_total{provider="lab",user="bob"} 1.0',
        'relay_upstream_replies_total{class="2xx",provider="agency"} 1.0',
        'relay_upstream_replies_total{class="4xx",provider="lab"} 1.0',
        'relay_upstream_replies_total{class="error",provider="lab"} 1.0',
        'relay_sent_copy_failures_total{provider="lab"} 1.0',
        'relay_oauth_refresh_failures_total{provider="agency"} 1.0',
        "# TYPE relay_delivery_seconds histogram",
    ):
        assert expected in lines, expected


async def test_delivery_histogram_counts_into_buckets(served: MetricsServer) -> None:
    served.metrics.delivery_attempted("agency", 0.3)
    served.metrics.delivery_attempted("agency", 7.0)
    _, _, body = await scrape(served)
    lines = body.splitlines()
    assert 'relay_delivery_seconds_bucket{le="0.25",provider="agency"} 0.0' in lines
    assert 'relay_delivery_seconds_bucket{le="0.5",provider="agency"} 1.0' in lines
    assert 'relay_delivery_seconds_bucket{le="+Inf",provider="agency"} 2.0' in lines
    assert 'relay_delivery_seconds_count{provider="agency"} 2.0' in lines
    assert 'relay_delivery_seconds_sum{provider="agency"} 7.3' in lines


async def test_queue_gauges_read_the_daemons_callbacks_at_each_scrape(
    served: MetricsServer,
) -> None:
    queue = {"size": 3.0, "age": 42.5}
    served.metrics.watch_queue(lambda: queue["size"], lambda: queue["age"])
    _, _, body = await scrape(served)
    assert "relay_queue_size 3.0" in body.splitlines()
    assert "relay_queue_oldest_age_seconds 42.5" in body.splitlines()
    queue["size"] = 0.0
    _, _, body = await scrape(served)
    assert "relay_queue_size 0.0" in body.splitlines()


async def test_failing_callback_gives_500_and_the_server_keeps_serving(
    served: MetricsServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> float:
        raise RuntimeError("spool closed")

    served.metrics.watch_queue(broken, lambda: 0.0)
    status, _, _ = await scrape(served)
    assert status == 500
    assert [r.getMessage() for r in caplog.records] == ["metrics.scrape_failed"]
    served.metrics.watch_queue(lambda: 1.0, lambda: 0.0)
    assert (await scrape(served))[0] == 200


async def test_openmetrics_is_served_when_the_scraper_asks_for_it(served: MetricsServer) -> None:
    served.metrics.session_opened()
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = await scrape(served, headers={"Accept": accept})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert "relay_sessions_total 1.0" in body.splitlines()
    assert body.endswith("# EOF\n")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 404), ("GET", "/metrics/x", 404), ("POST", "/metrics", 405)],
)
async def test_other_paths_and_methods_are_refused(
    served: MetricsServer, method: str, path: str, status: int
) -> None:
    assert (await scrape(served, method=method, path=path))[0] == status


async def test_head_gives_headers_without_a_body(served: MetricsServer) -> None:
    status, headers, body = await scrape(served, method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) > 0 and body == ""


async def test_garbage_request_line_gets_400(served: MetricsServer) -> None:
    assert served.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"hello\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_stop_frees_the_port_even_with_a_silent_client_connected() -> None:
    server = MetricsServer(Metrics())
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line that ends it
        await writer.drain()
        await asyncio.sleep(0.05)  # let the server pick the connection up
        async with asyncio.timeout(2):
            await server.stop()
        assert server.port is None
        try:
            assert await reader.read() == b""
        except ConnectionResetError:
            pass  # closed before the server had read what was sent: closed all the same
    finally:
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    again = MetricsServer(Metrics())
    try:
        assert await again.start("127.0.0.1", port) == port
    finally:
        await again.stop()
    await server.stop()  # idempotent


async def test_start_twice_is_refused(served: MetricsServer) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        await served.start("127.0.0.1", 0)


def test_each_metrics_owns_its_registry_and_the_global_one_stays_empty() -> None:
    first, second = Metrics(), Metrics()
    first.session_opened()
    assert first.registry.get_sample_value("relay_sessions_total") == 1.0
    assert second.registry.get_sample_value("relay_sessions_total") == 0.0
    assert REGISTRY.get_sample_value("relay_sessions_total") is None


@pytest.mark.parametrize(
    ("code", "label"), [(250, "2xx"), (221, "2xx"), (421, "4xx"), (554, "5xx"), (None, "error")]
)
def test_reply_codes_map_to_classes(code: int | None, label: str) -> None:
    assert reply_class(code) == label


def test_disabled_metrics_count_nothing_and_never_load_prometheus_client() -> None:
    # In a fresh interpreter: this test process has imported prometheus_client already.
    script = (
        "import sys\n"
        "import relay.cli\n"
        "from relay.ops import Ops\n"
        "ops = Ops.from_environ({}, metrics=False)\n"
        "ops.metrics.session_opened()\n"
        "ops.metrics.mail_accepted('alice', 'gmail')\n"
        "ops.metrics.watch_queue(lambda: 0.0, lambda: 0.0)\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_disabled_metrics_have_no_registry_to_serve() -> None:
    with pytest.raises(RuntimeError, match="disabled"):
        _ = Metrics(enabled=False).registry
