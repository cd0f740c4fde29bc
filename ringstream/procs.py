"""Facts about other processes that several parts need (a stale file's or ring's creator still running?)."""

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
