"""Which paths are the user's data, whose reads and writes a step depends on or makes: not the system's, the
libraries', the cache's own, the tools' settings and caches (matplotlib's font cache, IPython's and Jupyter's
folders) or the files ipykernel writes cells' code to; and of files, not compiled code that imports load.
"""

from __future__ import annotations

import functools
import os
import stat

from .fingerprint import library_roots

__all__ = ["is_data_file", "is_data_path"]

_IGNORED_SUFFIXES = (".pyc", ".so", ".pyd")  # compiled code, which imports load


@functools.cache
def _kernel_cells() -> str:
    """Where ipykernel writes cells' code for tracebacks (a new folder for every kernel)."""
    import tempfile  # (with shutil and lzma: only once a run is observed, not on import's path)

    return os.path.join(os.path.realpath(tempfile.gettempdir()), "ipykernel_")


_SYSTEM_ROOTS = ("/proc/", "/sys/", "/dev/", "/etc/", "/usr/", "/run/")


def is_data_path(path: str, cache_dir: str) -> bool:
    real = os.path.realpath(path)
    if real.startswith(_SYSTEM_ROOTS) or real.startswith(library_roots()):
        return False
    cache = os.path.join(os.path.realpath(cache_dir), "")
    return not (real + os.sep).startswith(cache) and not _is_config(real) and not real.startswith(_kernel_cells())


def is_data_file(path: str, cache_dir: str) -> bool:
    if path.endswith(_IGNORED_SUFFIXES) or not is_data_path(path, cache_dir):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _config_roots() -> tuple[str, ...]:
    home = os.path.expanduser("~")
    roots = [os.path.join(home, d) for d in (".cache", ".config", ".ipython", ".jupyter", ".local/share/jupyter",
                                             ".matplotlib", ".keras")]
    for variable in ("MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                     "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        if os.environ.get(variable):
            roots.append(os.environ[variable])
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots)


def _is_config(real: str) -> bool:
    """Files of the tools themselves (matplotlib's font cache, IPython's and Jupyter's settings)."""
    return real.startswith(_config_roots()) or os.path.basename(os.path.dirname(real)).startswith("matplotlib-")
