"""End a child process soon after the process that started it is gone.

The suite's children (benchmark workers, distributed ranks) are ended by their parent when it exits
normally. A parent killed by SIGKILL, by SIGTERM (``timeout``, a cancelled CI job, a batch
scheduler) or by a crash cannot do that, and a child stuck in a hanging kernel would keep running,
holding the GPU beside the next run. So each child starts a sentinel: a tiny process of its own
(Python without site, no torch) that waits for the parent to end and then kills the child.

A process, not a thread of the child: a kernel hung in C code that holds the GIL (a ``.item()`` on
a CUDA stream that never finishes, a C extension's busy loop) starves every thread of its process,
and a watching thread had never run (the suite SIGKILLed, the worker lived on). Not
``PR_SET_PDEATHSIG``, which fires when the *thread* that started the child ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


# The sentinel's code: argv = the child's pid, "group" or "pid", the parent's pid, then other
# processes whose end ends the child too. It waits on pidfds (Linux 5.3+; else polls) for any of
# them, or the child, to end; when one of them ended first it SIGKILLs the child (or its group, the
# sentinel's own too). A child whose parent is already not its parent (the parent died before the
# sentinel started, its pid perhaps reused) is killed at once.
_SENTINEL = r"""
import os, select, signal, sys, time
child, how, parent = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
watched = [parent] + [int(p) for p in sys.argv[4:]]

def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return False

def parent_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return int(fh.read().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return parent

def open_fds():
    try:
        return [os.pidfd_open(p) for p in [child] + watched]
    except (AttributeError, OSError):
        return None

ended = parent_of(child) != parent
if not ended:
    fds = open_fds()
    while not (gone(child) or any(gone(p) for p in watched)):
        if fds is not None:
            select.select(fds, [], [])
        else:
            time.sleep(POLL_S)
    ended = any(gone(p) for p in watched)
if ended and not gone(child):
    if how == "group":
        os.killpg(os.getpgid(child), signal.SIGKILL)
    else:
        os.kill(child, signal.SIGKILL)
"""


def exit_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S, *, whole_group: bool = False,
                     owner_pid: Optional[int] = None) -> subprocess.Popen:
    """Start the sentinel that kills this process once ``parent_pid`` (which must be its parent now)
    has ended; returns the sentinel's process.

    ``owner_pid``: a process that started this one through an intermediary (a fork server, which is
    then ``parent_pid``): its end ends this process too. ``whole_group``: kill this process's whole
    process group (for a child started in a session of its own, whose helper processes would
    otherwise outlive it too; the sentinel, in that group, goes with it); else this process alone.
    ``poll_s``: how often the sentinel looks where the system cannot tell it (no pidfd)."""
    watched = [str(parent_pid)] + ([str(owner_pid)] if owner_pid is not None else [])
    code = _SENTINEL.replace("POLL_S", repr(float(poll_s)))
    return subprocess.Popen([sys.executable, "-S", "-c", code, str(os.getpid()), "group" if whole_group else "pid",
                             *watched],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True)
