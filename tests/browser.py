"""Headless Chromium driven over the Chrome DevTools Protocol (one websocket, flattened target sessions): open a local
page, evaluate JavaScript after it ran, take a screenshot. Debian's ``chromium`` (``make setup`` installs it)."""
from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
         "--disable-extensions", "--remote-debugging-port=0", "--window-size=1280,1600"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """``with Browser() as b: b.open(path); b.eval("1+1")``. A fresh empty profile each time."""

    def __init__(self, timeout: float = 60.0):
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium; make setup installs it)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = self._devtools_url()
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(url, max_size=64 * 2**20, open_timeout=timeout))
        self.ids = itertools.count(1)
        self.session: str | None = None

    def _devtools_url(self) -> str:
        deadline = time.time() + self.timeout
        seen = []
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                return m.group(1)
        self.close()
        raise RuntimeError("chromium did not start its DevTools endpoint:\n" + "".join(seen[-20:]))

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        mid = next(self.ids)
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + self.timeout
        while True:
            got = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if got.get("id") == mid:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                return got.get("result", {})

    def open(self, path: str | Path) -> None:
        """Open a local file in a new tab and wait until its load event has run."""
        url = Path(path).resolve().as_uri()
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Page.navigate", {"url": url})
        deadline = time.time() + self.timeout
        while self.eval("document.readyState") != "complete" or self.eval("location.href") != url:
            if time.time() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
            time.sleep(0.1)

    def eval(self, expr: str, await_promise: bool = False) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": await_promise})
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, out: str | Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        out = Path(out)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        try:
            if getattr(self, "_stack", None) is not None:
                self._stack.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# Durations of every <audio> element once its metadata loaded (-1: the source failed to decode; -2: no answer in
# time). Elements are loaded a few at a time so the browser's media-player budget is never the limit.
AUDIO_DURATIONS_JS = """
(async () => {
  const els = Array.from(document.querySelectorAll('audio'));
  const one = (a) => new Promise((res) => {
    if (a.readyState >= 1 && a.duration > 0) return res(a.duration);
    const t = setTimeout(() => res(-2), 30000);
    a.addEventListener('loadedmetadata', () => { clearTimeout(t); res(a.duration); }, {once: true});
    a.addEventListener('error', () => { clearTimeout(t); res(-1); }, {once: true});
    a.preload = 'metadata'; a.load();
  });
  const out = [];
  for (let i = 0; i < els.length; i += 16) out.push(...await Promise.all(els.slice(i, i + 16).map(one)));
  return out;
})()
"""

VISIBLE_ROWS_JS = """
Array.from(document.querySelectorAll('tr.item')).filter(r => r.offsetParent !== null)
  .map(r => [r.dataset.task, r.dataset.verdict])
"""


def set_filter(b: Browser, task: str = "", verdict: str = "") -> list[list[str]]:
    """Choose the page's filters as a person would (select + change event); the rows left visible."""
    b.eval(f"""(() => {{
      for (const [id, v] of [['f-task', {json.dumps(task)}], ['f-verdict', {json.dumps(verdict)}]]) {{
        const s = document.getElementById(id); s.value = v; s.dispatchEvent(new Event('change'));
      }} }})()""")
    return b.eval(VISIBLE_ROWS_JS)
