"""A case's compiled graph depends on its own shapes only, never on the cases a worker ran before.

Dynamo's default compiles a function's second distinct shape as a dynamic-shape graph that then
serves every later shape; torch's uncompiled ``flex_attention`` goes through such a compile, so a
benchmark worker that had run other shapes timed another graph than a fresh process would (on one
H200, two ``flex-eager`` cases read 5.4% and 2.1% slower in the deferred device-time pass than in
their confirmation). Benchmark workers switch that off (:func:`torch_state.compile_per_shape`).
"""

from __future__ import annotations

import pytest
import torch

from attnsuite import torch_state
from attnsuite.runner import RunSpec
from attnsuite.worker import Worker


def _graphs_for_three_shapes() -> list[bool]:
    """Compile one function and call it on three lengths; per graph compiled: whether it is dynamic."""
    torch._dynamo.reset()
    dynamic: list[bool] = []

    def backend(gm, example_inputs):
        dynamic.append(any(isinstance(x, torch.SymInt) or
                           (isinstance(x, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in x.shape))
                           for x in example_inputs))
        return gm.forward

    fn = torch.compile(lambda x: torch.softmax(x * 2.0, dim=-1), backend=backend)
    for n in (8, 16, 24):
        fn(torch.randn(2, n))
    torch._dynamo.reset()
    return dynamic


@pytest.fixture
def dynamo_default():
    """This test's changes to dynamo's setting are undone after it."""
    before = torch._dynamo.config.automatic_dynamic_shapes
    yield
    torch._dynamo.config.automatic_dynamic_shapes = before


def test_by_default_the_second_shape_compiles_a_dynamic_graph_that_serves_later_shapes(dynamo_default):
    torch._dynamo.config.automatic_dynamic_shapes = True
    assert _graphs_for_three_shapes() == [False, True]  # the third shape reuses the dynamic graph


def test_compile_per_shape_gives_every_shape_its_own_static_graph(dynamo_default):
    torch_state.compile_per_shape()
    assert _graphs_for_three_shapes() == [False, False, False]


def test_a_benchmark_worker_compiles_per_shape_and_reports_a_variant_that_turns_it_back_on(dynamo_default):
    torch._dynamo.config.automatic_dynamic_shapes = True
    worker = Worker()
    worker.init({"spec": RunSpec(tier="quick", device="cpu", workloads=("gpt2-mha",)).to_json()})
    assert torch._dynamo.config.automatic_dynamic_shapes is False
    torch._dynamo.config.automatic_dynamic_shapes = True  # what a careless variant might do
    assert torch_state.end_case(worker.state) == ["dynamo automatic dynamic shapes: False -> True"]
    assert torch._dynamo.config.automatic_dynamic_shapes is False  # and it is undone


def _flex_eager_ops(history: list[tuple[int, int, int, int]]) -> list[str]:
    """The aten ops one uncompiled flex_attention call on (4, 4, 64, 32) runs, after calls on ``history``."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    def qkv(shape):
        return [torch.randn(*shape) for _ in range(3)]

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": on purpose
        for shape in history:
            flex_attention(*qkv(shape))
        case = qkv((4, 4, 64, 32))
        flex_attention(*case)  # warm
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            flex_attention(*case)
    torch._dynamo.reset()
    return sorted(e.name for e in prof.events() if e.name.startswith("aten::"))


def test_uncompiled_flex_runs_the_ops_of_a_fresh_process_after_other_shapes_only_when_compiling_per_shape(
        dynamo_default):
    history = [(4, 4, 64, 16), (8, 2, 78, 16), (2, 8, 64, 8)]
    torch_state.compile_per_shape()
    fresh = _flex_eager_ops([])
    assert _flex_eager_ops(history) == fresh
    # the default: after other shapes the call runs a dynamic-shape graph, with a host read of a
    # tensor (aten::item: a device synchronisation on CUDA) that a fresh process does not make
    torch._dynamo.config.automatic_dynamic_shapes = True
    after = _flex_eager_ops(history)
    assert "aten::item" in after and "aten::item" not in fresh
