"""The console in a real browser: Debian's headless Chromium driven by Selenium.

The service runs in uvicorn on a free local port (the real app with the console mounted, on
the movie catalogue of test_console.py). The test logs in, opens every page, gets a
recommendation and clicks one, chats, generates and approves content, erases a user and
logs out, saving a screenshot of each page to ``runs/console-screenshots/`` (git-ignored).
Without ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` it skips; under ``CI=true`` that
is a failure.

Run as a script to screenshot the pages of any running console (read-only apart from one
recommendation on Try it), e.g. for docs/console/::

    python tests/console/test_browser.py --url http://127.0.0.1:8000 --key rlk_… \
        --user 196 --out docs/console
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "console-screenshots"
WINDOW = (1280, 800)
PAGES = ("overview", "try", "loop", "gaps", "review", "privacy")


# ------------------------------------------------------------------------------ browser
def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} not found (apt-get install -y {package})"
    return None


def open_browser() -> Any:
    """Headless Chromium through Debian's chromedriver (Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    return driver


class Tour:
    """Steps through the console in one browser, screenshotting each page."""

    def __init__(self, driver: Any, base_url: str, out: Path, *, full_page: bool = False) -> None:
        self.driver = driver
        self.base = base_url.rstrip("/") + "/console"
        self.out = out
        self.full_page = full_page
        out.mkdir(parents=True, exist_ok=True)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)
        self.wait_for("main")

    def wait_for(self, css: str, timeout: float = 30.0) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, css))
        )

    def submit(self, button_css: str) -> None:
        """Click a submit button and wait for the next page."""
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.find("html")
        self.find(button_css).click()
        WebDriverWait(self.driver, 60).until(lambda d: _stale(old))
        self.wait_for("main")

    def flash(self) -> str:
        found = self.all("#flash")
        return str(found[0].text) if found else ""

    def shot(self, name: str) -> Path:
        """Save the page as ``name.png`` (the window, or the whole page up to 2400 px)."""
        path = self.out / f"{name}.png"
        if self.full_page:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(WINDOW[0], min(2400, max(WINDOW[1], int(height))))
        self.driver.save_screenshot(str(path))
        if self.full_page:
            self.driver.set_window_size(*WINDOW)
        return path

    def login(self, key: str) -> None:
        self.driver.get(self.base + "/")
        self.wait_for("#api_key")
        assert "/console/login" in self.driver.current_url
        self.find("#api_key").send_keys(key)
        self.submit("#login")
        assert self.driver.current_url.rstrip("/").endswith("/console"), self.driver.current_url

    def errors(self) -> list[str]:
        """Console errors the browser logged (CSP violations, failed assets, script errors),
        except the refused logins' 401 answers."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry.get("level") == "SEVERE"
            and not entry["message"].startswith(f"{self.base}/login - ")
        ]


def _stale(element: Any) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.tag_name  # noqa: B018  (touching it raises once the page was replaced)
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        # some ChromeDriver builds report a replaced page's node as an inspector error
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


# ------------------------------------------------------------------------------ service
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The real app on a free port, in a uvicorn thread, until the module's tests end."""
    import uvicorn

    from console.test_console import console_app, open_service

    state, keys = open_service(tmp_path_factory.mktemp("browser") / "home")
    port = free_port()
    config = uvicorn.Config(
        console_app(state),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", keys
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from conftest import require

    missing = browser_missing()
    require(missing is None, f"no browser for the console tests: {missing}")
    driver = open_browser()
    try:
        yield driver
    finally:
        driver.quit()


# ------------------------------------------------------------------------------ the test
def test_the_console_in_chromium(live_console: tuple[str, dict[str, str]], browser: Any) -> None:
    url, keys = live_console
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    tour = Tour(browser, url, SCREENSHOTS, full_page=True)

    # a client key is refused; the admin key gets in
    tour.open("/login")
    tour.shot("login")
    tour.find("#api_key").send_keys(keys["client"])
    tour.submit("#login")
    assert "only admin keys" in tour.find("#login-error").text
    tour.login(keys["admin"])
    assert "v0002" in tour.find("#versions").text
    assert tour.all("#leaderboard svg")
    tour.shot("overview")

    # Try it: a recommendation, a click on it, a chat
    tour.open("/try?user=u1")
    tour.submit("#recommend")
    rows = tour.all("#slate-items tbody tr")
    assert rows and "personalised" in tour.find("#slate").text
    source = rows[0].find_elements("css selector", "td")[3].text  # blended: any source
    assert source.split()[0] in ("ItemKNN", "content", "popular") and "faithful" in rows[0].text
    first = rows[0].get_attribute("data-item")
    tour.submit(f'tr[data-item="{first}"] button[data-feedback="click"]')
    assert tour.flash().startswith(f"Stored: click on {first}")
    assert "click" in tour.find(f'tr[data-item="{first}"]').text
    tour.find("#message").send_keys("a scary horror film")
    tour.submit("#send-message")
    assert tour.all(".msg.bot")
    tour.shot("try")

    tour.open("/loop")
    assert tour.find("#arm-probabilities svg")
    tour.shot("loop")

    # Gaps: analyse, then write content for the worst-served segments
    tour.open("/gaps?segments=3")
    assert len(tour.all("#gap-segments tbody tr")) == 3
    tour.submit("#generate-gaps button")
    assert tour.flash().startswith("Generated ")
    tour.shot("gaps")

    # Review: approve the first pending piece
    tour.open("/review")
    pending = tour.all("button[data-approve]")
    assert pending
    content_id = pending[0].get_attribute("data-approve")
    tour.submit(f'button[data-approve="{content_id}"]')
    assert tour.flash().endswith("is now approved.")
    tour.shot("review")

    # Privacy: erase a user, see the audit trail
    tour.open("/privacy?user=u5")
    tour.find("#erase-user").send_keys("u5")
    tour.find("#erase-confirm").send_keys("u5")
    tour.submit("#erase")
    assert tour.flash().startswith("Erased u5")
    assert "u5" in tour.find("#audit").text
    tour.shot("privacy")

    assert tour.errors() == []
    tour.submit("#logout")
    assert "/console/login" in browser.current_url
    for name in ("login", *PAGES):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000, name


# ------------------------------------------------------------------------------ script
def main(argv: list[str] | None = None) -> int:
    """Screenshot every page of a running console (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--key", default=os.environ.get("RECLOOP_ADMIN_KEY"), help="admin key")
    parser.add_argument("--user", default="1", help="the user shown on Try it")
    parser.add_argument("--out", type=Path, default=SCREENSHOTS)
    parser.add_argument("--full-page", action="store_true", help="whole pages, not the window")
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing or not args.key:
        print(missing or "give --key or RECLOOP_ADMIN_KEY", file=sys.stderr)
        return 2
    driver = open_browser()
    try:
        tour = Tour(driver, args.url, args.out, full_page=args.full_page)
        tour.open("/login")
        tour.shot("login")
        tour.login(args.key)
        tour.shot("overview")
        tour.open(f"/try?user={args.user}")
        tour.submit("#recommend")
        tour.shot("try")
        for page in PAGES[2:]:
            tour.open(f"/{page}")
            tour.shot(page)
        for error in tour.errors():
            print("browser error:", error, file=sys.stderr)
    finally:
        driver.quit()
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
