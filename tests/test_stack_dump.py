"""isolation.stack_in: which thread of a faulthandler dump a crash or a hang is blamed on, and which
frame of it names the place (the variant's own code before the suite's, torch's or Python's)."""

from __future__ import annotations

import pytest

from attnsuite.isolation import stack_in

LIB = "/lib/python3.11"
SUITE = "/src/attnsuite"
ROOTS = (LIB, SUITE)

# xdist's reader thread: site-packages lies outside the library roots (an installed variant may live there)
EXECNET = """Thread 0x00007f4a271ff6c0 (most recent call first):
  File "/venv/site-packages/execnet/gateway_base.py", line 534 in read
  File "/lib/python3.11/threading.py", line 975 in run
"""

MAIN_HANG = """Thread 0x00007f4a2865eb80 (most recent call first):
  File "/lib/python3.11/time.py", line 1 in sleep
  File "/home/me/kernels/slow.py", line 12 in run
  File "/src/attnsuite/case.py", line 45 in forward
"""

MAIN_IDLE = """Thread 0x00007f4a2865eb80 (most recent call first):
  File "/src/attnsuite/worker.py", line 80 in serve
"""


@pytest.mark.parametrize("dump, where", [
    # a timer's dump names no current thread: the main thread (listed last), not a helper thread before it
    ("Timeout (0:00:05)!\n" + EXECNET + "\n" + MAIN_HANG,
     'File "/home/me/kernels/slow.py", line 12 in run (innermost: File "/lib/python3.11/time.py", line 1 in sleep)'),
    # no thread in the variant's code: the main thread, which faulthandler lists last
    ("Timeout (0:00:05)!\n" + EXECNET + "\n" + MAIN_IDLE, 'File "/src/attnsuite/worker.py", line 80 in serve'),
    # a fatal signal: the current thread, even when another thread is in the variant's code
    ("Fatal Python error: Segmentation fault\n\n" + MAIN_HANG.replace("Thread 0x00007f4a2865eb80", "Thread 0x1") + "\n"
     + EXECNET.replace("Thread", "Current thread"),
     'File "/venv/site-packages/execnet/gateway_base.py", line 534 in read'),
    # the innermost frame is the variant's own: named alone
    ("Fatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n"
     '  File "/home/me/kernels/k.py", line 3 in run\n  File "/src/attnsuite/case.py", line 45 in forward\n',
     'File "/home/me/kernels/k.py", line 3 in run'),
], ids=["timer-dump-blames-the-main-thread", "timer-dump-blames-the-main-thread-in-library-code",
        "fatal-signal-blames-the-current-thread", "innermost-own-frame-named-alone"])
def test_a_dump_is_blamed_on_the_right_thread_and_frame(dump, where):
    text, found = stack_in("worker log line\n" + dump, ROOTS)
    assert found == where
    # the dump itself, from its first line (a timer's "Timeout" header left out), the log before it not
    assert text == "\n".join(line for line in dump.splitlines() if not line.startswith("Timeout"))


def test_a_log_without_a_dump_gives_nothing():
    assert stack_in("RuntimeError: boom\nmore text", ROOTS) == ("", "")


def test_the_library_roots_hold_triton_in_a_process_that_never_imported_it():
    # the xdist controller words a worker's crash without importing triton: a segfault inside Triton's
    # interpreter had been placed at triton/runtime/interpreter.py, not at the kernel's own line
    import subprocess
    import sys

    pytest.importorskip("triton")
    probe = ("import sys; from attnsuite import frames; roots = frames.library_roots(); "
             "print('triton' in sys.modules, any(r.rstrip('/').endswith('triton') for r in roots))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stdout + done.stderr
