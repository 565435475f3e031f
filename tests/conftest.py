from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import nbcache

# The suite signs with a throwaway key of its own (kernels and subprocesses inherit it), never with the
# user's ~/.config/nbcache/key; tests/test_keys.py covers how that one is found and made.
TEST_KEY = secrets.token_hex(32)
_key_file = Path(tempfile.mkdtemp(prefix="nbcache-test-key-")) / "key"
_key_file.write_text(TEST_KEY + "\n")
os.environ["NBCACHE_KEY_FILE"] = str(_key_file)
os.environ.pop("NBCACHE_KEY", None)


@pytest.fixture
def cache_dir(tmp_path: Path):
    """A fresh cache directory for one test, used through nbcache.set_cache_dir."""
    directory = tmp_path / "cache"
    nbcache.set_cache_dir(directory)
    yield directory
    nbcache.set_cache_dir(None)


def require(missing: str | None) -> None:
    """Skip a test whose tool is missing, saying so loudly; on CI (``CI`` set) fail instead: there the
    project installs every tool it needs, so a missing one is a defect, not a reason to skip."""
    if missing is None:
        return
    message = f"NOT RUN: {missing}"
    print(f"\n{'!' * 78}\n{message}\n{'!' * 78}", file=sys.__stderr__)
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{message} (on CI every tool must be installed: see .ci/run)")
    pytest.skip(message)


def dot_missing() -> str | None:
    import shutil

    return None if shutil.which("dot") else "Graphviz's dot is not installed (apt-get install graphviz)"


def run_python(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout; fail the test with stderr if it fails."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"subprocess failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def ipshell():
    """IPython's test shell (one per test session: it installs itself as the global IPython)."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    return start_ipython() or get_ipython()


@pytest.fixture(scope="module")
def shell(ipshell):
    """The test shell with nbcache loaded, for a module's tests."""
    ipshell.run_line_magic("load_ext", "nbcache")
    yield ipshell
    ipshell.run_line_magic("unload_ext", "nbcache")


def run_cell(ip, cell: str, **kwargs):
    """Run a cell that must succeed; its ExecutionResult."""
    result = ip.run_cell(cell, **kwargs)
    result.raise_error()
    return result


def every_cell_a_hit_after_a_restart(ip, cells: list[str], forget: tuple[str, ...]) -> None:
    """Run ``cells``; then, as a new kernel would (the names they bind, ``forget``, gone), run them again,
    each a hit."""
    for cell in cells:
        run_cell(ip, cell)
    for name in forget:
        del ip.user_ns[name]
    for cell in cells:
        run_cell(ip, cell)
        assert nbcache.runs()[-1].cached, nbcache.runs()[-1].reason


def two_steps():
    """Two small steps, ``total(load(n))``: a producer and its consumer."""
    @nbcache.step
    def load(n):
        return list(range(n))

    @nbcache.step
    def total(values):
        return sum(values)

    return load, total


@pytest.fixture(autouse=True, scope="session")
def _a_kernel_that_lost_its_port_is_started_again():
    """A kernel's ports are chosen free by jupyter_client, then bound by the kernel: a kernel another test
    started meanwhile can take one first (``ZMQError: Address already in use``), and the kernel dies before it
    replies. Nothing of the notebook has run then: a new kernel, on new ports, runs it (twice more at most).
    (``execute`` is nbclient's own sync wrapper of the coroutine as it was: both are wrapped.)"""
    from nbclient import NotebookClient

    def lost_its_port(exc: RuntimeError, attempt: int) -> bool:
        if "Kernel died before replying to kernel_info" not in str(exc) or attempt == 2:
            return False
        print(f"\nkernel lost its port, started again: {exc}", file=sys.__stderr__)
        return True

    originals = NotebookClient.async_execute, NotebookClient.execute

    async def async_execute(self, *args, **kwargs):
        for attempt in range(3):
            try:
                return await originals[0](self, *args, **kwargs)
            except RuntimeError as exc:
                if not lost_its_port(exc, attempt):
                    raise
                self.km = self.kc = None

    def execute(self, *args, **kwargs):
        for attempt in range(3):
            try:
                return originals[1](self, *args, **kwargs)
            except RuntimeError as exc:
                if not lost_its_port(exc, attempt):
                    raise
                self.km = self.kc = None

    NotebookClient.async_execute, NotebookClient.execute = async_execute, execute
    yield
    NotebookClient.async_execute, NotebookClient.execute = originals
