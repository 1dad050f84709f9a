"""TorchDynamo's recompile limits: lifted when a compiled variant is built, not at import.

The built-in variants had set the limits at import, which imported TorchDynamo (1.6 s on this
project's 2-core CPU machine) into every process that loaded them: each test run's pytest, each
benchmark run's controller. A compiled variant still gets the lifted limits before it compiles.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_LOAD = """
import sys
from attnsuite import registry
registry.load_builtin()
print("dynamo imported" if "torch._dynamo" in sys.modules else "dynamo not imported")
"""


def test_loading_the_built_in_variants_does_not_import_torchdynamo():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _LOAD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "dynamo not imported"


@pytest.mark.parametrize("name, lifted", [("compiled-explicit", True), ("explicit", False)])
def test_preparing_a_variant_lifts_the_recompile_limits_only_when_it_declares_compiled(name, lifted):
    import torch

    from attnsuite import case, registry
    from attnsuite.problem import Problem

    registry.load_builtin()
    config = torch._dynamo.config
    problem = Problem(batch=1, hq=2, hkv=2, lq=4, lk=4, dqk=8, dv=8, dtype="float32", device="cpu")
    with config.patch(recompile_limit=8, accumulated_recompile_limit=256):  # Dynamo's defaults, restored after
        case.prepare(registry.get(name), problem, requires_grad=False)
        got = (config.recompile_limit, config.accumulated_recompile_limit)
    assert got == ((case.RECOMPILE_LIMIT, case.ACCUMULATED_RECOMPILE_LIMIT) if lifted else (8, 256))


def test_lifting_never_lowers_a_limit_the_user_raised():
    import torch

    from attnsuite import case

    config = torch._dynamo.config
    with config.patch(recompile_limit=10_000, accumulated_recompile_limit=1):
        case.lift_recompile_limits()
        got = (config.recompile_limit, config.accumulated_recompile_limit)
    assert got == (10_000, case.ACCUMULATED_RECOMPILE_LIMIT)
