"""A real headless Chromium for the enrollment pages, and relay serving them in a child process."""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.harness import RelayProcess, RelaySetup, relay_process, write_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WEB_LISTENING = re.compile(r"web\.listening address=\S+ port=(\d+)")
# On a small machine as root: no sandbox (root), no GPU, no /dev/shm (it is tiny in containers).
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--window-size=1100,1800",
)


def browser_available() -> str | None:
    """None when Chromium and its driver are installed, else what to install."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    return (
        f"browser tests need apt-get install chromium chromium-driver ({missing})"
        if missing
        else None
    )


def require_browser() -> None:
    """Skip without Chromium, or fail when RELAY_REQUIRE_PEERS=1 says CI must run these."""
    problem = browser_available()
    if problem is None:
        return
    if os.environ.get("RELAY_REQUIRE_PEERS") == "1":
        pytest.fail(problem)
    pytest.skip(problem)


@contextmanager
def chromium(language: str = "en-US") -> Iterator[WebDriver]:
    """A fresh headless Chromium asking for pages in language; always quit afterwards."""
    require_browser()
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (*CHROMIUM_ARGS, f"--accept-lang={language}", f"--lang={language}"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        driver.quit()


def screenshot_dir() -> Path:
    """$RELAY_SCREENSHOTS, else a temporary folder; made if missing."""
    configured = os.environ.get("RELAY_SCREENSHOTS")
    folder = Path(configured) if configured else Path(tempfile.gettempdir()) / "relay-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def snap(driver: WebDriver, name: str) -> Path:
    """Save what the page shows now as NAME.png in the screenshot folder."""
    path = screenshot_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def text_of(driver: WebDriver, css: str) -> str:
    """The visible text of the first element matching css."""
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def page_text(driver: WebDriver) -> str:
    """All visible text of the page."""
    return text_of(driver, "body")


def click(driver: WebDriver, css: str) -> None:
    """Click an element that must be shown and enabled, then wait for the next page."""
    element = driver.find_element(By.CSS_SELECTOR, css)
    assert element.is_displayed() and element.is_enabled(), css
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            old.is_enabled()  # raises once the old page is gone
        except Exception:  # noqa: BLE001 (selenium's StaleElementReferenceException)
            break
        time.sleep(0.05)
    wait_loaded(driver)


def wait_loaded(driver: WebDriver) -> None:
    """Until the document (after any meta refresh) is complete."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if driver.execute_script("return document.readyState") == "complete":
            if not driver.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]"):
                return
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port the OS had free just now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class WebRelay:
    """relay serve with the web pages on, and how to reach both."""

    setup: RelaySetup
    process: RelayProcess
    web_port: int

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT of the pages."""
        return f"http://127.0.0.1:{self.web_port}"

    def invite(self, login: str, *args: str) -> str:
        """`relay user invite LOGIN ARGS`: the link it printed."""
        result = self.setup.cli("user", "invite", login, *args)
        assert result.status == 0, result.err
        return result.out.strip()

    def state_of(self, login: str) -> str:
        """The STATE column of `relay user list` for login."""
        for line in self.setup.cli("user", "list").out.splitlines()[1:]:
            if line.split()[0] == login:
                return line.split()[3]
        raise AssertionError(f"{login} not listed")


def open_invited_page(
    browser: WebDriver, relay: WebRelay, login: str, email: str, provider: str = "lab"
) -> None:
    """Invite login as the admin does, open the link in browser and press Continue."""
    browser.get(relay.invite(login, "--provider", provider, "--email", email))
    click(browser, "#continue")


@contextmanager
def web_relay(root: Path, providers: dict[str, Any], **settings: Any) -> Iterator[WebRelay]:
    """relay serve on loopback with the pages on a free port; stopped afterwards."""
    port = free_port()
    web = {"enabled": True, "port": port, **settings.pop("web", {})}
    setup = write_config(root, providers, web=web, **settings)
    with relay_process(setup) as process:
        deadline = time.monotonic() + 15
        while not (match := WEB_LISTENING.search(process.log())):
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.05)
        yield WebRelay(setup, process, int(match.group(1)))
