"""The operating system's name for a gateway thread.

Python's thread names stay inside Python (3.11 does not pass them on), so `top -H`,
`ps -L`, /proc/<pid>/task/*/comm and the benchmark's per-thread CPU figures would
show every thread as "python". Linux takes up to 15 bytes; elsewhere this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15


def name_native_thread() -> None:
    """Give the calling thread's Python name to the OS thread (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_NAME, threading.current_thread().name.encode("ascii", "replace")[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no libc or no prctl: the name is only a convenience
        pass
