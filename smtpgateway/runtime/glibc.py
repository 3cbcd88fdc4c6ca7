"""The glibc calls the gateway makes through ctypes: tuning and trimming the
heap, naming threads. Each is a no-op where there is no glibc (not Linux)."""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15


@functools.cache
def function(name: str) -> Callable[..., Any] | None:
    """glibc's ``name``, or None without glibc (loaded once per process)."""
    try:
        found: Callable[..., Any] = getattr(ctypes.CDLL("libc.so.6"), name)
        return found
    except (OSError, AttributeError):
        return None


def name_native_thread() -> None:
    """Give the calling thread's Python name (up to 15 bytes) to the OS thread.
    Python 3.11 keeps thread names to itself, so `top -H`, `ps -L`,
    /proc/<pid>/task/*/comm and the benchmark's per-thread CPU figures would show
    every thread as "python"."""
    prctl = function("prctl")
    if prctl is not None:
        prctl(_PR_SET_NAME, threading.current_thread().name.encode("ascii", "replace")[:15], 0, 0, 0)
