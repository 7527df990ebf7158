"""A headless Chromium driven over the DevTools protocol, for tests that look at a real rendered page.

Chromium's `--dump-dom` gives one snapshot after a fixed (virtual) time: too early for a page that
fetches its data, and a new browser per page. Here one browser is started with
`--remote-debugging-port=0`, its port read from `DevToolsActivePort`, and one page is driven through
its websocket (aiohttp's client, a dependency of MLflow): navigate, poll a JavaScript condition until
the data has rendered, read the text, capture PNG screenshots.

Under CI (the CI variable set) a missing Chromium is an error, never a skip (`.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Browser", "chromium_or_skip", "find_chromium"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable on PATH, or None."""
    for name in _NAMES:
        if found := shutil.which(name):
            return found
    return None


def chromium_or_skip() -> str:
    """Chromium's path; skip with the reason when there is none, fail instead under CI."""
    found = find_chromium()
    if found is None:
        reason = (f"no Chromium found on PATH (looked for {', '.join(_NAMES)}); install Debian's `chromium` "
                  "package (`.ci/run` does) to run the real-browser tests")
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Chromium for the real-browser tests: {reason}")
        pytest.skip(reason)
    return found


class Browser:
    """One headless Chromium page. Use as `with Browser.start(path, profile) as b: b.goto(url) ...`."""

    def __init__(self, proc: subprocess.Popen[bytes], ws_url: str) -> None:
        self._proc = proc
        self._loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._session: Any = None
        self._ws: Any = None
        self._loop.run_until_complete(self._connect(ws_url))

    @classmethod
    @contextmanager
    def start(cls, executable: str, profile: Path, *, width: int = 1400, height: int = 1000,
              timeout: float = 60.0) -> Iterator[Browser]:
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a stale one names another browser's port
        cmd = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-quic", "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-extensions",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", "--remote-debugging-port=0",
               "--remote-allow-origins=*", "about:blank"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        browser: Browser | None = None
        try:
            port = _wait_port(profile / "DevToolsActivePort", proc, timeout)
            browser = cls(proc, _page_ws(port, timeout))
            browser.send("Page.enable")
            browser.send("Runtime.enable")
            browser.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                         mobile=False)
            yield browser
        finally:
            if browser is not None:
                browser._close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ---------------------------------------------------------------- protocol
    async def _connect(self, ws_url: str) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0)

    async def _call(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        import aiohttp

        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = await self._ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection closed while waiting for {method} ({msg.type})")
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    def send(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """One DevTools command, its result (events in between are dropped)."""
        return self._loop.run_until_complete(self._call(method, params, timeout))

    def _close(self) -> None:
        async def close() -> None:
            await self._ws.close()
            await self._session.close()

        try:
            self._loop.run_until_complete(close())
        finally:
            self._loop.close()

    # ---------------------------------------------------------------- page
    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression!r}: {out['exceptionDetails'].get('text')}")
        return out.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 90.0, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value. Fails with the page's text on timeout."""
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while True:
            value = self.evaluate(guarded)  # null while the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                text = (self.text() or "")[:1500]
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what or expression}; "
                                     f"the page shows: {text!r}")
            time.sleep(0.5)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def _wait_port(active_port: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Chromium exited with code {proc.returncode} before opening its DevTools port")
        try:
            first = active_port.read_text().splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"Chromium opened no DevTools port in {timeout:g} s")


def _page_ws(port: int, timeout: float) -> str:
    """The websocket address of the browser's first page."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                pages = [t for t in json.load(resp) if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Chromium's DevTools on port {port} listed no page in {timeout:g} s")
        time.sleep(0.2)
