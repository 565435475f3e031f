"""Whose code did something: the user's (a notebook's cells, their own modules), a library's, the standard
library's, or an import's or a line magic's. What a run's own code does has effects a hit would not repeat; what
a library does for itself, or an import or a magic that a hit does again, has none of its own.
"""

from __future__ import annotations

import os
import sysconfig
from typing import Any

from .fingerprint_source import is_user_code, is_user_file

__all__ = ["asked_by_user", "in_standard_library", "users", "users_own"]


def asked_by_user(frame: Any, namespace: dict | None) -> bool:
    """Whether the code ``frame`` runs (past the standard library: subprocess, os, shutil) is the user's, not a
    library's (joblib starting workers, a library removing its own files); ``namespace``: the notebook's."""
    while frame is not None and in_standard_library(frame.f_code.co_filename):
        frame = frame.f_back  # past subprocess, os, multiprocessing: to the code that asked for the process
    # no such code: the standard library alone raised it, in a thread the step started
    # (`pool.map(os.system, commands)`), which only the step's own code could have asked for
    return frame is None or frame.f_globals is namespace or is_user_code(frame.f_globals.get("__name__"),
                                                                         frame.f_code.co_filename)


def users(frame: Any, package: str) -> bool:
    """Whether ``frame``'s code, past the frames of ``package`` (``logging``, ``logging.config``), is the user's."""
    while frame is not None and str(frame.f_globals.get("__name__")).partition(".")[0] == package:
        frame = frame.f_back
    return frame is not None and is_user_file(frame.f_code.co_filename)


def users_own(frame: Any) -> bool:
    """Whether the code ``frame`` runs is neither an import nor a line magic, nor called by one."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib") or frame.f_code.co_name == "run_line_magic":
            return False
        frame = frame.f_back
    return True


def in_standard_library(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    real = os.path.realpath(filename)
    return real.startswith(_STDLIB) and not real.startswith(_PACKAGES)


def _roots(*names: str) -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.join(os.path.realpath(paths[n]), "") for n in names if n in paths)


_STDLIB = _roots("stdlib", "platstdlib")  # (in a virtual environment, platstdlib holds site-packages)
_PACKAGES = _roots("purelib", "platlib")
