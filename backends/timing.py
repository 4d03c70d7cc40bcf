"""Latency measurement of a TVM build and of ONNX Runtime, taken the same way so ratios are fair.

Both use every core (TVM's default on a 2-core machine is one thread, ONNX Runtime's is all of them)
and report the median of ``repeat`` timings, each the mean of ``number`` calls after a warm-up, with
``number`` raised until one timing lasts ``min_repeat_ms`` (TVM's time_evaluator rule): a few calls
of a sub-millisecond net are dominated by thread-pool wake-ups and cold caches, not by its work.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import tvm
from tvm.runtime.vm import VirtualMachine

from edgesparse.backends.onnxruntime_ref import to_proto


def use_all_cores() -> int:
    """Sets TVM's thread pool size before its first use; returns the thread count."""
    threads = os.cpu_count() or 1
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    return int(os.environ["TVM_NUM_THREADS"])


MIN_REPEAT_MS = 50


def tvm_latency_ms(executable: tvm.runtime.Module, inputs: list[np.ndarray], *, number: int = 10, repeat: int = 5, min_repeat_ms: int = MIN_REPEAT_MS) -> float:
    device = tvm.cpu(0)
    vm = VirtualMachine(executable, device)
    vm.set_input("main", *[tvm.runtime.tensor(array, device) for array in inputs])
    vm.invoke_stateful("main")  # warm-up
    timer = vm.time_evaluator("invoke_stateful", device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return statistics.median(timer("main").results) * 1e3


def onnxruntime_latency_ms(
    model: ir.Model, inputs: dict[str, np.ndarray], *, number: int = 10, repeat: int = 5, min_repeat_ms: int = MIN_REPEAT_MS
) -> float:
    """ONNX Runtime with its full graph optimizations (as deployed), all cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = use_all_cores()
    options.log_severity_level = 3
    session = ort.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    session.run(None, inputs)  # warm-up, and a first estimate of one call
    number = max(number, math.ceil(min_repeat_ms / max(1e3 * (time.perf_counter() - start), 1e-3)))
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            session.run(None, inputs)
        timings.append((time.perf_counter() - start) / number)
    return statistics.median(timings) * 1e3
