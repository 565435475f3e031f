"""A real JupyterLab in headless Chromium, for tests that look at what a person would see.

    with JupyterLab(Path("notebooks"), cache_dir=tmp_path / "cache") as lab:   # or yield it from a fixture
        page = lab.open("cells.ipynb")           # a playwright Page, ready for DOM queries
        assert lab.run_all()                     # True when every cell ran without error
        assert lab.restart_and_run_all()
        lab.screenshot(tmp_path / "cells.png")   # the whole notebook, not just the window

The server runs on a temporary copy of the notebooks folder with its own temporary Jupyter config, data,
runtime and IPython directories (nothing read from or left in the user's), autosave off, NBCACHE_DIR set
to ``cache_dir``, on 127.0.0.1 with a random token. It needs Debian's ``chromium``, playwright's Python
package (never ``playwright install``) and jupyterlab: ``JupyterLab.missing()`` says which are absent.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SETTINGS = {  # JupyterLab user settings: no autosave, no news or update checks, every cell in the DOM
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "scrollPastEnd": False},
}
KERNEL_IDLE = """() => { const w = window.jupyterapp?.shell.currentWidget, k = w?.sessionContext?.session?.kernel;
    return !!(w?.context?.isReady && w.content?.widgets && k && k.status === 'idle'); }"""
NOTHING_RUNNING = """() => ![...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
    .some(p => p.textContent.includes('[*]'))"""
RUN = """command => { window.__nbtestDone = undefined; window.jupyterapp.commands.execute(command)
    .then(value => { window.__nbtestDone = {value}; }, error => { window.__nbtestDone = {error: String(error)}; }); }"""


class JupyterLab:
    """JupyterLab serving a temporary copy of ``notebooks``, driven through headless Chromium.

    ``failure_screenshot``: where to save a screenshot when the ``with`` block raises (None: nowhere).
    """

    def __init__(self, notebooks: Path, cache_dir: Path, *, timeout_s: float = 120,
                 viewport: tuple[int, int] = (1280, 900), failure_screenshot: Path | None = None) -> None:
        self.source, self.cache_dir, self.timeout_s = Path(notebooks), Path(cache_dir), timeout_s
        self.viewport, self.failure_screenshot = viewport, failure_screenshot
        self.token = secrets.token_hex(16)
        self.tmp = Path(tempfile.mkdtemp(prefix="nbcache-lab-"))
        self.root = self.tmp / "notebooks"  # the copy the server serves; the kernels' working directory
        self.url = ""  # http://127.0.0.1:PORT once started
        self.server: subprocess.Popen[bytes] | None = None
        self.console_errors: list[str] = []  # the browser's console errors and uncaught page errors
        self.page: Any = None  # a playwright.sync_api.Page once open() has run
        self._playwright: Any = None
        self._browser: Any = None

    @staticmethod
    def missing() -> str | None:
        """Why a browser test cannot run here (chromium, playwright or jupyterlab not installed), or None."""
        absent = [name for name, ok in (("Debian's chromium (apt-get install chromium)", os.access(CHROMIUM, os.X_OK)),
                                        ("playwright (pip)", _installed("playwright")),
                                        ("jupyterlab (pip)", _installed("jupyterlab"))) if not ok]
        return "not installed: " + ", ".join(absent) if absent else None

    def __enter__(self) -> JupyterLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if error is not None and self.failure_screenshot and self.page is not None:
                self.screenshot(self.failure_screenshot)
        except Exception:
            pass
        finally:
            self.close()

    def start(self) -> None:
        """Copy the notebooks, start the server and wait until /api/status answers."""
        shutil.copytree(self.source, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", ".nbcache"))
        dirs = {name: self.tmp / name for name in ("config", "data", "runtime", "ipython")}
        kernel = dirs["data"] / "kernels" / "python3"  # this interpreter's kernel, whatever else is installed
        kernel.mkdir(parents=True)
        (kernel / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3", "language": "python"}))
        for plugin, values in SETTINGS.items():
            (dirs["config"] / "lab" / "user-settings" / plugin).parent.mkdir(parents=True, exist_ok=True)
            (dirs["config"] / "lab" / "user-settings" / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
        env = {**os.environ, "NBCACHE_DIR": str(self.cache_dir), "JUPYTER_CONFIG_DIR": str(dirs["config"]),
               "JUPYTER_DATA_DIR": str(dirs["data"]), "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
               "IPYTHONDIR": str(dirs["ipython"]), "JUPYTER_PLATFORM_DIRS": "1"}
        env.pop("JUPYTER_PATH", None)
        for attempt in range(3):  # a free port can be taken between finding it and the server binding it
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            with open(self.tmp / f"server-{attempt}.log", "wb") as log:
                self.server = subprocess.Popen(
                    [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
                     f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                     f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
                     "--ServerApp.terminals_enabled=False"],
                    cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + self.timeout_s
            while self.server.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self._request("/api/status"), timeout=5) as response:
                        if response.status == 200:
                            return
                except OSError:
                    time.sleep(0.2)
            self._stop_server()
        raise RuntimeError(f"JupyterLab did not start; its log ends:\n{self.server_log()[-3000:]}")

    def server_log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("server-*.log")))

    def open(self, notebook: str) -> Any:
        """Open ``notebook`` (a path in the copied folder), wait for its kernel, and return the page."""
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        self.page = self._browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
        self.page.set_default_timeout(self.timeout_s * 1000)
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        self.page.goto(f"{self.url}/lab/tree/{notebook}?token={self.token}")
        self.page.wait_for_function(KERNEL_IDLE)
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # no file browser in screenshots
        return self.page

    def run_all(self) -> bool:
        """Run every cell; True if all succeeded (Run All stops at a failing cell)."""
        return self._run("notebook:run-all-cells")

    def restart_and_run_all(self) -> bool:
        """Restart the kernel (accepting the "Restart Kernel?" dialog) and run every cell."""
        return self._run("notebook:restart-run-all")

    def _run(self, command: str) -> bool:
        self.page.evaluate(RUN, command)
        while True:  # the command's promise settles when the last cell has finished
            self.page.wait_for_function(
                "() => window.__nbtestDone !== undefined || !!document.querySelector('.jp-Dialog .jp-mod-accept')")
            if self.page.evaluate("() => window.__nbtestDone !== undefined"):
                break
            self.page.locator(".jp-Dialog .jp-mod-accept").click()
            self.page.locator(".jp-Dialog").wait_for(state="detached")
        done = self.page.evaluate("() => window.__nbtestDone")
        if "error" in done:
            raise RuntimeError(f"{command} failed: {done['error']}")
        self.wait_idle()
        return bool(done["value"])

    def wait_idle(self) -> None:
        """Wait until no cell shows ``[*]`` and the kernel is idle."""
        self.page.wait_for_function(NOTHING_RUNNING)
        self.page.wait_for_function(KERNEL_IDLE)

    def cell(self, starting_with: str) -> Any:
        """The playwright Locator of the first cell whose source starts with ``starting_with``."""
        index = self.page.evaluate("""prefix => window.jupyterapp.shell.currentWidget.content.widgets
            .findIndex(w => w.model.sharedModel.getSource().startsWith(prefix))""", starting_with)
        if index < 0:
            raise LookupError(f"no cell starts with {starting_with!r}")
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def execution_counts(self) -> list[str]:
        """The code cells' input prompts, such as ``['[1]:', '[2]:', '[*]:', '[ ]:']``."""
        return [p.strip() for p in self.page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_inner_texts()]

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole notebook, from its top: the window is made as tall as the notebook."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        hidden = self.page.evaluate("""() => { const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');
            if (!s) return 0; s.scrollTop = 0; return s.scrollHeight - s.clientHeight; }""")
        width, height = self.viewport
        self.page.set_viewport_size({"width": width, "height": min(height + max(hidden, 0) + 40, 12000)})
        self.page.wait_for_timeout(300)  # let JupyterLab lay itself out again
        self.page.screenshot(path=str(path))
        self.page.set_viewport_size({"width": width, "height": height})
        return path

    def close(self) -> None:
        """Close the browser, stop the server and its kernels, remove the temporary copy; safe to repeat."""
        for stop in (self._browser and self._browser.close, self._playwright and self._playwright.stop):
            try:
                stop and stop()
            except Exception:
                pass
        self._browser = self._playwright = self.page = None
        self._stop_server()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _request(self, path: str, method: str = "GET") -> urllib.request.Request:
        return urllib.request.Request(self.url + path, method=method, headers={"Authorization": f"token {self.token}"})

    def _stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            try:  # a clean shutdown also shuts its kernels down
                urllib.request.urlopen(self._request("/api/shutdown", "POST"), timeout=5).close()
                self.server.wait(10)
            except Exception:
                pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if self.server.poll() is None:
                    os.killpg(self.server.pid, sig)
                    try:
                        self.server.wait(10)
                    except subprocess.TimeoutExpired:
                        continue
        marker = str(self.tmp / "runtime")  # kernels have sessions of their own: end any left, by connection file
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _installed(distribution: str) -> bool:
    """Whether a pip package is installed, by its metadata (this file's own name shadows ``jupyterlab``)."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
