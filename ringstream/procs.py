"""Facts about processes that several parts need (a stale file's or ring's creator still running?) and this
process's memory."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists: ours, or someone else's (``kill(pid, 0)`` refused with EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def return_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``); False where there is no such call.

    A long-lived process that allocates and frees large buffers in bursts (a run's last omega groups and zarr.zip
    while the next run starts) keeps its heap at the high-water mark of those bursts: freed, but still resident.
    Trimming at quiet moments keeps the resident size what is in use."""
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim is False:
        return False
    _trim(0)
    return True


_trim = None
