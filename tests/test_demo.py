"""The first run in one command: `relay demo` serves SMTP and the page, and prints a link."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.test_queue_peers import free_port

LINK = re.compile(r"open this link to connect \S+ \(it works once\): (http://\S+)")


def start_demo(directory: Path, smtp_port: int, web_port: int) -> subprocess.Popen[str]:
    """`relay demo` as a newcomer runs it, on ports of the test's choosing."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--email", "alice@gmail.com"]
        + ["--dir", str(directory), "--smtp-port", str(smtp_port), "--web-port", str(web_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until_link(process: subprocess.Popen[str], web_port: int) -> tuple[str, str]:
    """What the demo printed up to its link and its page listening; (output, link)."""
    assert process.stdout is not None
    seen, link = "", None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        link = link or next(iter(LINK.findall(line)), None)
        if link and f"web.listening address=127.0.0.1 port={web_port}" in seen:
            return seen, link
    raise AssertionError(f"relay demo did not get going:\n{seen}")


def test_relay_demo_serves_smtp_and_the_page_with_a_link_for_the_newcomer(
    tmp_path: Path,
) -> None:
    smtp_port, web_port = free_port(), free_port()
    process = start_demo(tmp_path / "relay-demo", smtp_port, web_port)
    try:
        output, link = read_until_link(process, web_port)
        with urllib.request.urlopen(link, timeout=10) as page:  # noqa: S310  (our own loopback)
            html = page.read().decode()
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            code, _ = client.ehlo()
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    assert f"SMTP server 127.0.0.1, port {smtp_port}" in output
    assert link.startswith(f"http://127.0.0.1:{web_port}/enroll/")
    assert "alice@gmail.com" in html
    assert code == 250 and status == 0
    config = (tmp_path / "relay-demo" / "config.yaml").read_text()
    assert "preset: gmail" in config and "enabled: true" in config
