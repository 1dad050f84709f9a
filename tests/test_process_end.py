"""What a variants module leaves behind cannot change a finished run's exit status or hold it
(attnsuite/exits.py, attnsuite/plugin.py pytest_unconfigure), and a module that crashes the
interpreter while imported is named (attnsuite/import_limit.py crash_traced). Found by an outside
tester: an atexit handler's os._exit(0) turned failing runs into exit 0, a non-daemon thread held
finished runs for ever, and a segfault at import ended every command with no output."""

from __future__ import annotations

import os
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# after the module's own lines, so that the line numbers the tests expect are the module's
REGISTERS = """
from attnsuite.registry import KernelVariant, register


@register
class Leftover(KernelVariant):
    name = "leftover"

    def build(self, problem):
        return lambda q, k, v: q
"""


def _run(pytester: pytest.Pytester, module: str, test_body: str, *args: str, env: dict | None = None):
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    variants = pytester.path / "leftovers.py"
    variants.write_text(textwrap.dedent(module) + REGISTERS)
    pytester.makepyfile(test_it=textwrap.dedent(test_body))
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for key, value in (env or {}).items():
        mp.setenv(key, value)
    try:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--attn-variants={variants}", "test_it.py",
                                             *args, timeout=120)
    finally:
        mp.undo()


ATEXIT = """
    import atexit, os
    atexit.register(lambda: os._exit({code}))
"""


@pytest.mark.parametrize("test_passes, code, expected", [
    (False, 0, 1),  # a failing run stays failed
    (True, 3, 0),   # and a passing one passed
])
def test_an_atexit_handler_of_a_variants_module_cannot_change_the_runs_exit_status(pytester, test_passes, code,
                                                                                  expected):
    result = _run(pytester, ATEXIT.format(code=code), f"def test_it():\n    assert {test_passes}\n")
    assert result.ret == expected, (result.stdout.str()[-2000:], result.stderr.str()[-2000:])
    result.stderr.fnmatch_lines([f"attnsuite: os._exit({code}) called at *leftovers.py:3 after the run had ended "
                                 f"(an atexit handler of a variants module?): the run's exit status {expected} stands"])


def test_an_atexit_handler_that_exits_with_the_runs_own_status_is_not_remarked_on(pytester):
    result = _run(pytester, ATEXIT.format(code=1), "def test_it():\n    assert False\n")
    assert result.ret == 1
    assert "os._exit" not in result.stderr.str()


def test_a_thread_a_variants_module_left_running_does_not_hold_the_finished_run(pytester):
    module = """
        import threading, time

        def forever():
            time.sleep(1e6)

        threading.Thread(target=forever, name="poller").start()
    """
    result = _run(pytester, module, "def test_it():\n    assert False\n", env={"ATTNSUITE_EXIT_GRACE_S": "1"})
    assert result.ret == 1, result.stderr.str()[-2000:]  # the run's own status, not a hang (timeout=120)
    result.stderr.fnmatch_lines(["attnsuite: the run had ended 1 s ago and this process was still waiting for 1 "
                                 "thread(s) that are not daemons: 'poller' (its function at *leftovers.py:4). It "
                                 "ends without them, exit status 1 *"])


def test_a_thread_that_ends_by_itself_is_waited_for_in_silence(pytester):
    module = """
        import threading, time
        threading.Thread(target=time.sleep, args=(2,), name="short").start()
    """
    result = _run(pytester, module, "def test_it():\n    pass\n", env={"ATTNSUITE_EXIT_GRACE_S": "30"})
    assert result.ret == 0 and "attnsuite: the run had ended" not in result.stderr.str()


def test_a_usage_error_with_a_thread_left_running_still_ends(pytester):
    # the module loads, then --attn-only names a variant that does not exist: no session ever starts
    module = """
        import threading, time
        threading.Thread(target=time.sleep, args=(1e6,), name="poller").start()
    """
    result = _run(pytester, module, "def test_it():\n    pass\n", "--attn-only=nonesuch",
                  env={"ATTNSUITE_EXIT_GRACE_S": "1"})
    assert result.ret == 4, result.stderr.str()[-2000:]
    result.stderr.fnmatch_lines(["*--attn-only*nonesuch*", "attnsuite: the run had ended 1 s ago and this process "
                                 "was still waiting for 1 thread(s) *exit status 4 *"], consecutive=False)


def test_a_variants_module_that_crashes_the_interpreter_while_imported_is_named(pytester):
    module = """
        import ctypes
        ctypes.string_at(0)  # a segfault, as a C extension built against the wrong ABI gives
    """
    result = _run(pytester, module, "def test_it():\n    pass\n")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["Fatal Python error: Segmentation fault", "*", "*leftovers.py*line 3*"],
                                consecutive=False)


def test_an_exit_grace_that_is_no_number_is_said_and_the_default_used(pytester):
    result = _run(pytester, "X = 1\n", "def test_it():\n    pass\n", env={"ATTNSUITE_EXIT_GRACE_S": "soon"})
    assert result.ret == 0
    result.stderr.fnmatch_lines(["attnsuite: ATTNSUITE_EXIT_GRACE_S='soon' is not a number of seconds >= 0: 20 s used"])
