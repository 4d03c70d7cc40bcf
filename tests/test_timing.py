"""Latency timers: interleaved rounds, and TVM's and ONNX Runtime's timers on one compiled model."""

import math

import pytest
from conftest import load_model

from edgesparse.backends import compile_model, timing
from edgesparse.passes.onnxruntime_ref import random_inputs


def test_interleaved_rounds_take_turns_in_blocks_after_a_warm_up(monkeypatch):
    monkeypatch.setattr(timing, "SETTLE_S", 0.0)
    calls = []

    def fake_timer(name, values):
        results = iter(values)

        def timer():
            calls.append(name)
            return next(results)

        return timer

    # per block: a warm-up timing (100, discarded), then two timings
    a = fake_timer("a", [100.0, 5.0, 1.0, 100.0, 3.0, 4.0])
    b = fake_timer("b", [100.0, 2.0, 9.0, 100.0, 4.0, 8.0])
    timings = timing.interleaved_timings([a, b], repeat=2, rounds=2)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert [result.blocks for result in timings] == [[[5.0, 1.0], [3.0, 4.0]], [[2.0, 9.0], [4.0, 8.0]]]
    assert [result.median_ms for result in timings] == [3.5, 6.0]
    # a's blocks' medians 3.0 and 3.5, b's 5.5 and 6.0
    assert [result.fastest_block_ms for result in timings] == [3.0, 5.5]


@pytest.mark.parametrize("make_timer", ["tvm", "onnxruntime"])
def test_each_runtimes_timer_gives_a_per_call_latency(make_timer):
    result = compile_model(load_model("tiny"), "llvm")
    inputs = random_inputs(result.optimized)
    if make_timer == "tvm":
        timer = timing.tvm_timer(result.build.executable, list(inputs.values()), number=1, min_repeat_ms=20)
    else:
        timer = timing.onnxruntime_timer(result.optimized, inputs, number=1, min_repeat_ms=20)
    timings = [timer() for _ in range(2)]
    assert all(math.isfinite(value) and value > 0 for value in timings)
