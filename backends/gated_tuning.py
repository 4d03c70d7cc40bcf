"""Tuning of the gated sparse kernels' knobs, measured by the same MetaSchedule builder and runner as
the dense tasks (on the board through the tracker, or on this host).

MetaSchedule searches schedules of unscheduled PrimFuncs; a gated kernel is written scheduled, and its
search space is the grid of :class:`GatedConvSchedule` knobs that :func:`schedule_space` lists. Each
distinct gated conv shape of the model is one workload, and one of tune()'s tasks (:class:`GatedTask`,
a ``tuning.TuningTask`` as MetaSchedule's tasks are). Its candidates are measured in a fixed order
(the default schedule first, the rest shuffled with a fixed seed), so a re-run measures only those it
has not measured yet. Every measurement, failures included, goes to ``gated_schedules.json`` in the
tuning directory as soon as a workload's round is done; builds take the fastest schedule per workload
from it (``compile_model(..., tuning_db=DIR)``).

The runner fills kernel arguments with uniform values in [1, 10) (TVM's ``random_fill_for_measure``),
so a candidate is built for measuring with the threshold that gates off the asked ``sparsity`` of such
values: its time is the time at that sparsity. The built model keeps its own thresholds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import onnx_ir as ir
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from edgesparse.backends.gated_conv import (
    GatedConvSchedule,
    GatedConvShape,
    default_schedule,
    gated_conv2d,
    schedule_space,
    shape_of,
    workload_key,
)
from edgesparse.passes.gated_conv_op import DOMAIN, OP_TYPE
from edgesparse.passes.report import FeatRegSummary, GatedLayers, read

SCHEDULES_FILE = "gated_schedules.json"
# random_fill_for_measure's range: the threshold 1 + 9 s gates off a fraction s of the values.
_FILL_LOW, _FILL_HIGH = 1.0, 10.0


@dataclasses.dataclass
class GatedWorkload:
    shape: GatedConvShape
    key: str
    # Candidate knobs in measuring order: the default first.
    candidates: list[GatedConvSchedule]
    # Gated kernels of this shape in the module.
    calls: int = 1

    def unmeasured(self, records: GatedScheduleRecords) -> list[GatedConvSchedule]:
        """The candidates not in ``records`` yet, in measuring order."""
        done = set(records.measured(self.key))
        return [schedule for schedule in self.candidates if schedule not in done]

    @property
    def name(self) -> str:
        shape = self.shape
        kind = "depthwise" if shape.is_depthwise else f"{shape.in_channels}->{shape.out_channels}"
        return f"gated_conv {kind} {shape.kernel[0]}x{shape.kernel[1]} on {shape.height}x{shape.width}"


def gated_workloads(mod: tvm.IRModule, target: Target) -> list[GatedWorkload]:
    """One workload per distinct gated kernel shape in an imported Relax module."""
    shapes = Counter(
        shape
        for _, function in mod.functions_items()
        if isinstance(function, tvm.tirx.PrimFunc) and (shape := shape_of(function)) is not None
    )
    workloads = []
    for shape in sorted(shapes, key=repr):
        default = default_schedule(shape, target)
        rest = [schedule for schedule in schedule_space(shape, target) if schedule != default]
        random.Random(workload_key(shape, target)).shuffle(rest)
        workloads.append(GatedWorkload(shape, workload_key(shape, target), [default, *rest], shapes[shape]))
    return workloads


def measuring_sparsity(model: ir.Model) -> float:
    """The sparsity to time the kernels at: the mean input sparsity the featreg pass measured on the
    gated layers (calibrated models), else the model's chosen level, else one half."""
    layers, summary = read(model, GatedLayers), read(model, FeatRegSummary)
    measured = layers.measured_sparsities(OP_TYPE) if layers is not None else []
    if measured:
        return sum(measured) / len(measured)
    return summary.sparsity_level if summary is not None and summary.sparsity_level is not None else 0.5


def measuring_threshold(sparsity: float) -> float:
    return _FILL_LOW + (_FILL_HIGH - _FILL_LOW) * sparsity


class GatedScheduleRecords:
    """``gated_schedules.json``: per workload key, every measured candidate (``ms`` None: failed)."""

    def __init__(self, work_dir: str | os.PathLike):
        self.path = Path(work_dir) / SCHEDULES_FILE
        self.records: dict[str, list[dict]] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def measured(self, key: str) -> list[GatedConvSchedule]:
        return [GatedConvSchedule(**record["schedule"]) for record in self.records.get(key, [])]

    def add(self, key: str, schedule: GatedConvSchedule, mean_ms: float | None, error: str | None) -> None:
        self.records.setdefault(key, []).append(
            {"schedule": dataclasses.asdict(schedule), "ms": mean_ms, "error": error}
        )

    def save(self) -> None:
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(self.records, indent=1) + "\n")
        staging.replace(self.path)

    def best_ms(self, key: str) -> float | None:
        fastest = self._fastest(key)
        return fastest["ms"] if fastest else None

    def best_schedules(self) -> dict[str, GatedConvSchedule]:
        """Workload key -> the fastest candidate that ran (workloads with none are left out)."""
        return {
            key: GatedConvSchedule(**fastest["schedule"]) for key in self.records if (fastest := self._fastest(key))
        }

    def _fastest(self, key: str) -> dict | None:
        ran = [record for record in self.records.get(key, []) if record["ms"] is not None]
        return min(ran, key=lambda record: record["ms"]) if ran else None


@dataclasses.dataclass
class GatedTask:
    """A workload as a task of tune() (a ``tuning.TuningTask``): its candidates recorded in ``records``, built
    for ``target`` at ``sparsity`` by ``builder``, run by ``runner``; ``progress`` hears of each round (name,
    candidates measured, of which failed, best ms)."""

    workload: GatedWorkload
    records: GatedScheduleRecords
    target: Target
    sparsity: float
    builder: ms.builder.Builder
    runner: ms.runner.Runner
    progress: Callable[[str, int, int, float | None], None]
    # No FLOP count: the work depends on the input's sparsity.
    flop = None

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def calls(self) -> int:
        return self.workload.calls

    def trials(self) -> int:
        return len(self.records.measured(self.workload.key))

    def best_ms(self) -> float | None:
        return self.records.best_ms(self.workload.key)

    def missing(self, share: int) -> int:
        return len(self.workload.unmeasured(self.records)[: max(0, share - self.trials())])

    @classmethod
    def tune(cls, tasks: Sequence[GatedTask], trials: Sequence[int]) -> None:
        """Measures each workload's next candidates in measuring order, its records saved as soon as they are."""
        for task, count in zip(tasks, trials):
            todo = task.workload.unmeasured(task.records)[:count]
            results = list(_measure(task.workload.shape, todo, task.target, task.sparsity, task.builder, task.runner))
            for schedule, (mean_ms, error) in zip(todo, results):
                task.records.add(task.workload.key, schedule, mean_ms, error)
            task.records.save()
            task.progress(task.name, len(results), sum(error is not None for _, error in results), task.best_ms())


def _measure(
    shape: GatedConvShape,
    schedules: list[GatedConvSchedule],
    target: Target,
    sparsity: float,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
) -> Iterator[tuple[float | None, str | None]]:
    """(mean ms, None) or (None, error) per schedule: built together, then run together."""
    if not schedules:
        return
    functions = [
        gated_conv2d(shape, measuring_threshold(sparsity), schedule, target).with_attr("global_symbol", "main")
        for schedule in schedules
    ]
    built = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": function}), target) for function in functions])
    inputs = [
        ms.runner.RunnerInput(
            result.artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(function)
        )  # CPU targets only
        for result, function in zip(built, functions)
        if result.error_msg is None
    ]
    futures = iter(runner.run(inputs))
    for result in built:
        if result.error_msg is not None:
            yield None, f"build: {result.error_msg.splitlines()[0] if result.error_msg else 'failed'}"
            continue
        ran = next(futures).result()
        if ran.error_msg is not None or not ran.run_secs:
            yield None, f"run: {(ran.error_msg or 'no time').splitlines()[0]}"
        else:
            yield 1e3 * sum(float(value) for value in ran.run_secs) / len(ran.run_secs), None


# ----------------------------------------------------------------------------------- the per-layer choice
# Per gated workload key: the tuned dense kernel's and the tuned gated kernel's best time on the target
# (the gated one at the calibrated sparsity), written by tune(); compile_model(..., tuning_db=) keeps the
# faster kernel per layer. Without it, the featreg pass's min_sparsity (BREAK_EVEN_SPARSITY) decides.
KERNEL_CHOICE_FILE = "kernel_choice.json"
DENSE_ALTERNATIVES_DIR = "dense_alternatives"


def choose_kernel(dense_ms: float | None, gated_ms: float | None) -> str:
    """ "gated" where the gated kernel measured faster than the dense one (or the dense one has no time),
    else "dense"; a gated kernel with no successful time never wins."""
    if gated_ms is None:
        return "dense"
    return "gated" if dense_ms is None or gated_ms < dense_ms else "dense"


class KernelChoices:
    """``kernel_choice.json``: workload key -> {"dense_ms", "gated_ms", "sparsity", "choice"}."""

    def __init__(self, work_dir: str | os.PathLike):
        self.path = Path(work_dir) / KERNEL_CHOICE_FILE
        self.records: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add(self, key: str, dense_ms: float | None, gated_ms: float | None, sparsity: float) -> str:
        choice = choose_kernel(dense_ms, gated_ms)
        self.records[key] = {"dense_ms": dense_ms, "gated_ms": gated_ms, "sparsity": sparsity, "choice": choice}
        return choice

    def save(self) -> None:
        self.path.write_text(json.dumps(self.records, indent=1) + "\n")

    def dense_layers(self, model: ir.Model, target: Target) -> list[str]:
        """The GatedConv nodes of ``model`` (after the featreg pass) whose workload measured faster dense."""
        names = []
        for node in model.graph:
            if node.domain == DOMAIN and node.op_type == OP_TYPE and (shape := onnx_gated_shape(node)) is not None:
                if self.records.get(workload_key(shape, target), {}).get("choice") == "dense":
                    names.append(node.name)
        return names


def onnx_gated_shape(node: ir.Node) -> GatedConvShape | None:
    """The kernel shape of a GatedConv node with static shapes (as relax_import builds it), else None."""
    x, weight = node.inputs[0], node.inputs[1]
    if x.shape is None or not x.shape.is_static() or weight.shape is None or len(x.shape) != 4:
        return None
    batch, channels, height, width = (int(dim) for dim in x.shape)
    try:
        return GatedConvShape(
            batch,
            channels,
            int(weight.shape[0]),
            height,
            width,
            kernel=tuple(int(dim) for dim in weight.shape[2:]),
            stride=tuple(node.attributes.get_ints("strides", [1, 1])),
            pads=tuple(node.attributes.get_ints("pads", [0, 0, 0, 0])),
            dilation=tuple(node.attributes.get_ints("dilations", [1, 1])),
            group=node.attributes.get_int("group", 1),
        )
    except ValueError:
        return None


def dense_conv_model(shape: GatedConvShape) -> ir.Model:
    """One dense Conv (with bias) of ``shape``, random weights: the dense alternative of a gated workload,
    tuned as a model of its own."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal(shape.weight_shape) * 0.05).astype(np.float32)
    bias = rng.standard_normal(shape.out_channels).astype(np.float32)
    conv = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        strides=list(shape.stride),
        pads=list(shape.pads),
        dilations=list(shape.dilation),
        group=shape.group,
    )
    graph = helper.make_graph(
        [conv],
        "dense_alternative",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, [shape.batch, shape.in_channels, shape.height, shape.width]
            )
        ],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [shape.batch, shape.out_channels, shape.out_height, shape.out_width]
            )
        ],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def dense_alternative_dir(work_dir: str | os.PathLike, key: str) -> Path:
    import hashlib

    return Path(work_dir) / DENSE_ALTERNATIVES_DIR / hashlib.sha1(key.encode()).hexdigest()[:16]
