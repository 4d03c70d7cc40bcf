"""Latency measurement of a TVM build and of ONNX Runtime, taken the same way so ratios are fair.

Both use every core (TVM's default on a 2-core machine is one thread, ONNX Runtime's is all of them).
A timer gives one timing: the mean of ``number`` calls after a warm-up, with ``number`` raised until one
timing lasts ``min_repeat_ms`` (TVM's time_evaluator rule): a few calls of a sub-millisecond net are
dominated by thread-pool wake-ups and cold caches, not by its work. A latency is the median of
``repeat`` timings. :func:`interleaved_latencies_ms` times several runtimes in turns (``ROUNDS`` blocks
each), so that a slow spell of a shared host falls on all of them, not on whichever happened to run then.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import tvm
from tvm.runtime.vm import VirtualMachine

from edgesparse.passes.onnxruntime_ref import to_proto

MIN_REPEAT_MS = 50
# A runtime's pool threads go on spinning after its last call, for tens of milliseconds or more, and slow a
# runtime timed right after it several times over (docs/tuning.md). Each block of timings waits this long
# first, and its first timing, taken while the other runtime's threads may still spin, is a warm-up.
SETTLE_S = 1.0
ROUNDS = 5

Timer = Callable[[], float]


def use_all_cores() -> int:
    """Sets TVM's thread pool size before its first use; returns the thread count."""
    threads = os.cpu_count() or 1
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    return int(os.environ["TVM_NUM_THREADS"])


def tvm_timer(
    executable: tvm.runtime.Module, inputs: list[np.ndarray], *, number: int = 10, min_repeat_ms: int = MIN_REPEAT_MS
) -> Timer:
    """One timing (ms) of the VM's ``main`` per call, its inputs set once."""
    device = tvm.cpu(0)
    vm = VirtualMachine(executable, device)
    vm.set_input("main", *[tvm.runtime.tensor(array, device) for array in inputs])
    vm.invoke_stateful("main")  # warm-up
    evaluator = vm.time_evaluator("invoke_stateful", device, number=number, repeat=1, min_repeat_ms=min_repeat_ms)
    return lambda: evaluator("main").results[0] * 1e3


def onnxruntime_timer(
    model: ir.Model, inputs: dict[str, np.ndarray], *, number: int = 10, min_repeat_ms: int = MIN_REPEAT_MS
) -> Timer:
    """One timing (ms) of ONNX Runtime with its full graph optimizations (as deployed), all cores, its
    inputs and outputs bound to the session (no numpy conversions in the timed calls)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = use_all_cores()
    options.log_severity_level = 3
    session = ort.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    # Inputs bound once, as the TVM timer sets them once: session.run would convert them and the outputs
    # from and to numpy on every call, microseconds a call that a sub-millisecond net would count as its own
    # (docs/tuning.md).
    binding = session.io_binding()
    for name, array in inputs.items():
        binding.bind_cpu_input(name, array)
    for output in session.get_outputs():
        binding.bind_output(output.name)
    start = time.perf_counter()
    session.run_with_iobinding(binding)  # warm-up, and a first estimate of one call
    calls = max(number, math.ceil(min_repeat_ms / max(1e3 * (time.perf_counter() - start), 1e-3)))

    def timing() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            session.run_with_iobinding(binding)
        return (time.perf_counter() - start) / calls * 1e3

    return timing


@dataclasses.dataclass
class Timings:
    """One runtime's timings (ms), a list per block of timings taken in a row."""

    blocks: list[list[float]]

    @property
    def median_ms(self) -> float:
        return statistics.median(itertools.chain.from_iterable(self.blocks))

    @property
    def fastest_block_ms(self) -> float:
        """The median of its fastest block. A shared host's slow spells last a block or more and only
        add time: this is the runtime's latency in the spells when the host lets it run."""
        return min(statistics.median(block) for block in self.blocks)


def interleaved_timings(timers: Sequence[Timer], repeat: int = 5, rounds: int = ROUNDS) -> list[Timings]:
    """``rounds`` rounds, each a block of ``repeat`` timings of every timer in turn (after a settling
    pause and a warm-up timing)."""
    timings = [Timings([]) for _ in timers]
    for _ in range(rounds):
        for timer, results in zip(timers, timings):
            time.sleep(SETTLE_S)
            timer()
            results.blocks.append([timer() for _ in range(repeat)])
    return timings


def interleaved_latencies_ms(timers: Sequence[Timer], repeat: int = 5, rounds: int = ROUNDS) -> list[float]:
    """Each timer's median timing over :func:`interleaved_timings`."""
    return [timings.median_ms for timings in interleaved_timings(timers, repeat, rounds)]


def tvm_latency_ms(
    executable: tvm.runtime.Module,
    inputs: list[np.ndarray],
    *,
    number: int = 10,
    repeat: int = 5,
    min_repeat_ms: int = MIN_REPEAT_MS,
) -> float:
    return interleaved_latencies_ms(
        [tvm_timer(executable, inputs, number=number, min_repeat_ms=min_repeat_ms)], repeat, rounds=1
    )[0]


def onnxruntime_latency_ms(
    model: ir.Model,
    inputs: dict[str, np.ndarray],
    *,
    number: int = 10,
    repeat: int = 5,
    min_repeat_ms: int = MIN_REPEAT_MS,
) -> float:
    return interleaved_latencies_ms(
        [onnxruntime_timer(model, inputs, number=number, min_repeat_ms=min_repeat_ms)], repeat, rounds=1
    )[0]
