"""End a child process soon after the process that started it is gone.

The suite's children (benchmark workers, distributed ranks) are ended by their parent when it exits
normally. A parent killed by SIGKILL, by SIGTERM (``timeout``, a cancelled CI job, a batch
scheduler) or by a crash cannot do that, and a child stuck in a hanging kernel would keep running,
holding the GPU beside the next run. A thread polls for the parent (not ``PR_SET_PDEATHSIG``, which
fires when the *thread* that started the child ends) and ends the child.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

PARENT_POLL_S = 0.5


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead and not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): kill's answer stands
        return True


def exit_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S, *, whole_group: bool = False,
                     owner_pid: Optional[int] = None) -> threading.Thread:
    """Start a daemon thread that ends this process once ``parent_pid`` is no longer its parent.

    ``owner_pid``: a process that started this one through an intermediary (a fork server, which is
    then ``parent_pid``): its end ends this process too. ``whole_group``: kill this process's whole
    process group (for a child started in a session of its own, whose helper processes would
    otherwise outlive it too); else exit this process alone."""
    def watch() -> None:
        while os.getppid() == parent_pid and (owner_pid is None or process_alive(owner_pid)):
            time.sleep(poll_s)
        if whole_group:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    thread = threading.Thread(target=watch, name="attnsuite-parent-watch", daemon=True)
    thread.start()
    return thread
