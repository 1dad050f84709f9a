"""The dispatcher that spreads cases over GPUs: order, queue-jumping, failures, and the GPU ids."""

from __future__ import annotations

import threading
import time

import pytest

from attnsuite.dispatch import Dispatcher, visible_gpus


class _Backend:
    """Records which keys it ran; ``gate`` (an Event) holds every job until it is set."""

    def __init__(self, name, gate=None):
        self.name, self.gate, self.ran = name, gate, []

    def job(self, key):
        def run(backend):
            if backend.gate is not None:
                backend.gate.wait(10)
            backend.ran.append(key)
            return f"{key} on {backend.name}"
        return run


def test_one_backend_runs_each_job_inline_when_its_reply_is_asked_for():
    b = _Backend("only")
    d = Dispatcher([b])
    d.submit([("a", b.job("a")), ("b", b.job("b"))])  # nothing runs ahead with one backend
    assert b.ran == [] and not d.parallel
    assert d.result("b", b.job("b")).value == "b on only" and b.ran == ["b"]
    d.close(lambda backend: None)


def test_several_backends_share_the_queue_and_every_reply_names_its_slot():
    backends = [_Backend("gpu0"), _Backend("gpu1")]
    d = Dispatcher(backends)
    keys = [f"case{i}" for i in range(12)]

    def job(key):
        def run(backend):
            time.sleep(0.01)  # long enough that both threads take jobs
            backend.ran.append(key)
            return key
        return run

    d.submit([(k, job(k)) for k in keys])
    replies = {k: d.result(k, job(k)) for k in keys}
    assert [r.value for r in replies.values()] == keys
    assert sorted(backends[0].ran + backends[1].ran) == sorted(keys)  # each case ran exactly once
    assert backends[0].ran and backends[1].ran  # both GPUs worked
    for k, r in replies.items():
        assert k in backends[r.slot].ran
    d.close(lambda backend: None)


def test_jobs_start_in_the_order_they_were_queued():
    started = []
    lock = threading.Lock()

    def job(key):
        def run(backend):
            with lock:
                started.append(key)
            return key
        return run

    d = Dispatcher([_Backend("a"), _Backend("b")])
    keys = [str(i) for i in range(20)]
    d.submit([(k, job(k)) for k in keys])
    for k in keys:
        d.result(k, job(k))
    assert started == keys  # threads pop from the front of one queue
    d.close(lambda backend: None)


def test_a_reply_asked_for_before_it_was_queued_jumps_the_queue():
    gate = threading.Event()
    started = []
    lock = threading.Lock()

    def job(key):
        def run(backend):
            with lock:
                started.append(key)
            gate.wait(10)
            return key
        return run

    d = Dispatcher([_Backend("a"), _Backend("b")])
    d.submit([(f"q{i}", job(f"q{i}")) for i in range(6)])
    _wait_until(lambda: len(started) == 2)  # both threads hold q0 and q1 behind the gate
    waiter = threading.Thread(target=lambda: d.result("urgent", job("urgent")))
    waiter.start()
    _wait_until(lambda: d._queue and d._queue[0][0] == "urgent")
    gate.set()
    waiter.join(10)
    for k in [f"q{i}" for i in range(6)]:
        d.result(k, job(k))
    assert set(started[:2]) == {"q0", "q1"} and started[2] == "urgent"
    d.close(lambda backend: None)


def _wait_until(predicate, limit_s: float = 10.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


def test_a_job_that_raises_becomes_an_error_reply_and_the_threads_go_on():
    d = Dispatcher([_Backend("a"), _Backend("b")])

    def broken(backend):
        raise ValueError("bug in a job")

    replies = d.run_all([("bad", broken), ("good", lambda backend: "fine")])
    assert replies["bad"].value == {"error": "ValueError: bug in a job"}
    assert replies["good"].value == "fine"
    assert d.errors == ["bad: ValueError: bug in a job"]
    d.close(lambda backend: None)


def test_closing_closes_every_backend_and_a_waiter_is_told():
    closed = []
    gate = threading.Event()
    d = Dispatcher([_Backend("a", gate), _Backend("b", gate)])
    d.submit([(f"k{i}", d.backends[0].job(f"k{i}")) for i in range(4)])
    d.close(lambda backend: (closed.append(backend.name), gate.set()))
    assert closed == ["a", "b"]
    with pytest.raises(RuntimeError, match="closed before 'k3' ran"):
        d.result("k3", d.backends[0].job("k3"))


@pytest.mark.parametrize("env,count,expected", [
    ({}, 2, ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, 2, ["3", "5"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb,GPU-cc"}, 2, ["GPU-aa", "GPU-bb"]),
])
def test_each_worker_gets_the_gpu_the_parent_sees_at_that_index(env, count, expected):
    assert visible_gpus(count, env) == expected


def test_asking_for_more_gpus_than_are_visible_is_refused_naming_both():
    with pytest.raises(ValueError, match="3 GPUs asked for, 2 visible"):
        visible_gpus(3, {"CUDA_VISIBLE_DEVICES": "0,1"})
