"""MetaSchedule tuning of a model's fused PrimFuncs, measured on this host or on a device through an RPC
tracker, kept in a JSON database that builds then apply (``compile_model(..., tuning_db=DIR)``).

    spec = resolve_target("arm_cpu")
    tune(model, spec, "tuning/", trials=200, rpc_address=RPCAddress.parse("127.0.0.1:9190:arm64-qemu"))
    compile_model(model, "arm_cpu", tuning_db="tuning/").save("build/")

The tasks are the PrimFuncs of the module after the same passes and the same first half of the Relax
pipeline as a build (:func:`edgesparse.backends.tvm_build.fuse`), so the database holds exactly what
the build looks up. A board farm is several RPC servers under one key: the runner keeps one session per
registered server busy and the tracker hands each request to a free one. The database is written as
candidates are measured, and a second run counts what it already holds: it only tunes what is missing.
The gated kernels, written scheduled, are tuned by their knobs instead (gated_tuning); tune() shares the
trials among both kinds of :class:`TuningTask`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import onnx_ir as ir
import tvm
from tqdm import tqdm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.target import Target

from edgesparse.backends.compiler import optimize
from edgesparse.backends.errors import BackendError
from edgesparse.backends.gated_conv import shape_of
from edgesparse.backends.gated_tuning import (
    GatedScheduleRecords,
    GatedTask,
    KernelChoices,
    dense_alternative_dir,
    dense_conv_model,
    gated_workloads,
    measuring_sparsity,
)
from edgesparse.backends.relax_import import import_to_relax
from edgesparse.backends.rpc import RPCAddress, check_tracker, request_session
from edgesparse.backends.targets import TargetSpec
from edgesparse.backends.timing import use_all_cores
from edgesparse.backends.tvm_build import (
    IMPORTED_CONV_LAYOUT,
    export_library,
    fuse,
    record_conv_layout,
    tuned_conv_layout,
)
from edgesparse.passes.pipeline import DEFAULT_PASSES

# CPU targets: MetaSchedule's GPU rules would need an OpenCL/CUDA runtime on the board, untested here.
TUNABLE_TARGETS = ("llvm", "arm_cpu")
# A candidate's build runs in a fresh worker that first imports TVM; slow machines need more than 30 s.
BUILD_TIMEOUT_S = 120.0
# One candidate's RPC session (upload, load, time_evaluator): a slow or emulated board needs minutes.
SESSION_TIMEOUT_S = 180
# Warm-up, then 3 runs; repeated until a repeat lasts 100 ms so that microsecond kernels are not noise.
EVALUATOR = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100, enable_cpu_cache_flush=False)
# The name of each candidate library, on this host and as uploaded to the board.
CANDIDATE_FILE = "candidate.so"
# Keys of the tasks whose search space ran out, in the tuning directory beside MetaSchedule's files.
EXHAUSTED_FILE = "exhausted_tasks.json"
# Every task's first search round, whatever its cost: an untuned task keeps the slow default schedule.
FIRST_ROUND_TRIALS = 16
# Candidates per later search round and task. A round's evolutionary search costs the same whatever it
# picks, and on a small CPU host it is most of a 16-candidate round's time (docs/tuning.md): bigger rounds
# measure more candidates an hour; the cost model still learns between them.
TRIALS_PER_ROUND = 32
# The conv2d layout dense models are tuned in. Vectorized along the output channels, NHWC's tuned convs
# were faster than NCHW's on the ResNet-style net (docs/benchmarks.md). Models with gated kernels, which
# read NCHW, keep it: each would need a transpose on either side.
DENSE_CONV_LAYOUT = "NHWC"


@dataclasses.dataclass
class TaskResult:
    name: str
    # Measurements in the database (earlier runs included), failed candidates counted.
    trials: int
    # Mean latency of the fastest candidate in the database; None: none ran successfully yet.
    best_ms: float | None
    # Its calls per model run.
    calls: int
    # Floating-point operations per call (TVM's estimate_tir_flops); None for a gated kernel, whose
    # work depends on its input.
    flop: float | None

    @property
    def gflops(self) -> float | None:
        """The rate of its fastest candidate: how far it is from the device's ceiling."""
        return self.flop / self.best_ms / 1e6 if self.flop and self.best_ms else None


@dataclasses.dataclass
class TuningSummary:
    work_dir: Path
    target: Target
    # The conv2d data layout the tasks were tuned in (builds from the database use it too).
    conv_layout: str
    tasks: list[TaskResult]
    # Candidates measured by this run (0: the database already held the requested trials).
    measured: int
    # Of those, candidates that failed to build or run (they count as trials, never as fast).
    failed: int
    # Gated workload key -> {"dense_ms", "gated_ms", "sparsity", "choice"} (gated_tuning.KernelChoices).
    kernel_choices: dict = dataclasses.field(default_factory=dict)

    def model_ms(self) -> float | None:
        """The tasks' best times, each timed alone, added up over a model run (calls counted): what the
        tuned kernels take without the calls between them; None while a task has no time."""
        times = [task.best_ms * task.calls for task in self.tasks if task.best_ms is not None]
        return sum(times) if len(times) == len(self.tasks) else None


class TuningTask(Protocol):
    """What tune() shares its trials among: a fused PrimFunc whose schedule MetaSchedule searches
    (:class:`MetaScheduleTask`), or a gated kernel shape whose knobs are searched (gated_tuning.GatedTask)."""

    @property
    def name(self) -> str: ...

    @property
    def calls(self) -> int:
        """Its calls per model run: its best time counts that often in the trial shares."""

    @property
    def flop(self) -> float | None:
        """Floating-point operations per call; None where they depend on the input."""

    def trials(self) -> int:
        """The candidates measured so far, in the tuning directory (earlier runs' and failed ones included)."""

    def best_ms(self) -> float | None:
        """Mean latency of its fastest candidate so far; None while none ran successfully."""

    def missing(self, share: int) -> int:
        """The candidates it lacks for ``share`` in all; none once its search space ran out."""

    @classmethod
    def tune(cls, tasks: Sequence[TuningTask], trials: Sequence[int]) -> None:
        """Measures ``trials[i]`` more candidates for ``tasks[i]``: the tasks of this kind in one tune() call,
        together, so that a kind can search several in one run."""


def tuning_target(spec: TargetSpec, rpc_address: RPCAddress | None) -> Target:
    """``spec.target`` with the ``num-cores`` MetaSchedule needs: the target's own, else the device's
    TVM thread count (this host's core count when measuring here)."""
    if "num-cores" in spec.target.attrs:
        return spec.target
    cores = device_threads(rpc_address) if rpc_address is not None else os.cpu_count() or 1
    return Target({**spec.target.export(), "num-cores": cores}, host=spec.target.host)


def device_threads(rpc_address: RPCAddress) -> int:
    """How many threads the device's TVM runtime runs a parallel loop on."""
    return int(request_session(rpc_address).get_function("runtime.NumThreads")())


def extract_tasks(
    mod: tvm.IRModule, spec: TargetSpec, target: Target, conv_layout: str = IMPORTED_CONV_LAYOUT
) -> list[ms.ExtractedTask]:
    """MetaSchedule's tasks of an imported model: its fused, not yet scheduled PrimFuncs. The gated
    kernels, written scheduled, are tuned by their own knobs instead (gated_tuning)."""
    tasks = ms.relax_integration.extract_tasks(fuse(mod, spec, conv_layout), target)
    return [task for task in tasks if shape_of(task.dispatched[0]["main"]) is None]


def _build_candidate(mod: tvm.IRModule, target: Target, _params: Mapping | None) -> tvm.runtime.Module:
    """MetaSchedule's default build minus its import of ``tvm.s_tir.tensor_intrin`` (30-40 s in every
    fresh build worker here, longer than the build timeout), which fp32 CPU schedules do not use."""
    mod = tvm.s_tir.transform.RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.driver.build(mod, target=target)


def _export_candidate(module: tvm.runtime.Module, cross_compiler: str | None) -> str:
    """A shared library linked here (for ARM by the cross compiler): the board never links anything."""
    path = os.path.join(tempfile.mkdtemp(prefix="edgesparse-candidate-"), CANDIDATE_FILE)
    export_library(module, path, cross_compiler)
    return path


def make_builder(spec: TargetSpec) -> ms.builder.LocalBuilder:
    return ms.builder.LocalBuilder(
        f_build=_build_candidate,
        f_export=functools.partial(_export_candidate, cross_compiler=spec.cross_compiler),
        timeout_sec=BUILD_TIMEOUT_S,
    )


def make_runner(rpc_address: RPCAddress | None, session_timeout_s: float = SESSION_TIMEOUT_S) -> ms.runner.Runner:
    """This host's runner, or an RPC runner with one worker per server registered under the key."""
    if rpc_address is None:
        use_all_cores()  # the runner's workers inherit it: measure with the threads a deployment uses
        return ms.runner.LocalRunner(timeout_sec=session_timeout_s, evaluator_config=EVALUATOR)
    servers = registered_servers(rpc_address)
    config = ms.runner.RPCConfig(
        tracker_host=rpc_address.host,
        tracker_port=rpc_address.port,
        tracker_key=rpc_address.key,
        session_timeout_sec=int(session_timeout_s),
    )
    return ms.runner.RPCRunner(config, EVALUATOR, max_workers=servers)


def registered_servers(rpc_address: RPCAddress) -> int:
    """Servers registered under the key (a one-line error when the tracker or the key is not there)."""
    summary = check_tracker(rpc_address).summary()
    return sum(1 for server in summary["server_info"] if server["key"].split(":")[-1] == rpc_address.key)


def first_round(tasks: int, trials: int) -> int:
    """Each task's first trials: a search round, or an even split of ``trials`` when that is less."""
    return max(1, min(FIRST_ROUND_TRIALS, trials // tasks))


def extra_trials(times_ms: Sequence[float | None], remaining: int, counts: Sequence[int] | None = None) -> list[int]:
    """``remaining`` trials as whole rounds, each to the task furthest below its share of all the trials
    (the ``counts`` it has, plus these) by its measured time per model run; a task without one (nothing
    ran, or its search space ran out) gets none.

    Measured time, not FLOPs: in the ResNet-style test net the two stride-2 3x3 convs do a fifth of the
    FLOPs and, tuned by FLOPs, took over a third of the time. Shares of all the trials, not of those
    left: a task new to a resumed database (a pipeline change made it) catches up with the others
    instead of getting a sliver of what is left. Whole rounds keep the tasks' missing trials few
    distinct numbers: each is a scheduler run of its own (MetaScheduleTask.tune), with a cold cost model.
    """
    weights = [time or 0.0 for time in times_ms]
    have = list(counts) if counts is not None else [0] * len(weights)
    extra = [0] * len(weights)
    timed = [index for index, weight in enumerate(weights) if weight > 0]
    rounds = max(0, remaining) // TRIALS_PER_ROUND
    if not timed:
        return extra
    final, total_weight = sum(have) + rounds * TRIALS_PER_ROUND, sum(weights)
    for _ in range(rounds):
        furthest_below = max(
            timed, key=lambda index: final * weights[index] / total_weight - have[index] - extra[index]
        )
        extra[furthest_below] += TRIALS_PER_ROUND
    return extra


def exhausted_tasks(work_dir: Path) -> set[str]:
    """Workload keys of the tasks whose search space ran out before their share (a re-run skips them)."""
    path = work_dir / EXHAUSTED_FILE
    return set(json.loads(path.read_text())) if path.is_file() else set()


def mark_exhausted(work_dir: Path, keys: set[str]) -> None:
    if keys:
        (work_dir / EXHAUSTED_FILE).write_text(json.dumps(sorted(exhausted_tasks(work_dir) | keys)) + "\n")


@derived_object
class ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """Shows the task, the trials and its best latency so far on a progress bar; counts failures."""

    def __init__(self, bar: tqdm):
        super().__init__()
        self.bar = bar
        self.best_s: dict[str, float] = {}
        self.measured = 0
        self.failed = 0

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        name = task_scheduler.tasks_[task_id].ctx.task_name
        failed = 0
        for built, ran in zip(builder_results, runner_results):
            if built.error_msg is not None or ran.error_msg is not None or not ran.run_secs:
                failed += 1
                continue
            mean_s = sum(float(value) for value in ran.run_secs) / len(ran.run_secs)
            self.best_s[name] = min(mean_s, self.best_s.get(name, math.inf))
        self.count(name, len(runner_results), failed, self.best_s[name] * 1e3 if name in self.best_s else None)

    def count(self, name: str, measured: int, failed: int, best_ms: float | None) -> None:
        """Adds a task's newly measured candidates to the bar."""
        self.measured += measured
        self.failed += failed
        best = f"{best_ms:.4f} ms" if best_ms is not None else "-"
        self.bar.set_postfix_str(f"{name}: best {best}, failed {self.failed}")
        self.bar.update(measured)


@contextlib.contextmanager
def _metaschedule_logger_setup() -> Iterator[None]:
    """Around MetaSchedule's logger set-up: its console keeps warnings only (its tables and rounds go to
    work_dir/logs), and handlers without a name are kept aside meanwhile. Its dictConfig lists every
    handler of its logger by name; one that someone else attached (pytest 9 attaches its capture
    handler to non-propagating loggers) has none, and a second set-up in the same process fails on it."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [handler for handler in logger.handlers if handler.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    logger.setLevel(logging.WARNING)  # the level its console handler gets
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


@dataclasses.dataclass
class _MetaScheduleRun:
    """What the MetaSchedule tasks of one tune() call share: the tuning directory and its database, the
    builder and runner that measure candidates, the progress callback."""

    work_dir: Path
    database: ms.database.Database
    builder: ms.builder.Builder
    runner: ms.runner.Runner
    progress: ProgressCallback
    # (database size, its records per workload key) when last counted: counted again once it grew
    counted: tuple[int, Counter] = dataclasses.field(default_factory=lambda: (-1, Counter()))

    def trials(self, key: str) -> int:
        """The candidates the database holds for workload ``key`` (failed ones included)."""
        if self.counted[0] != len(self.database):
            records = self.database.get_all_tuning_records()
            self.counted = (len(records), Counter(ms.utils.shash2hex(record.workload.mod) for record in records))
        return self.counted[1][key]

    def tune_group(self, tasks: list[MetaScheduleTask], trials_per_task: int) -> None:
        """MetaSchedule's task scheduler over ``tasks``, each up to ``trials_per_task`` new candidates."""
        shares = [task.trials() + trials_per_task for task in tasks]
        with _metaschedule_logger_setup():
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [task.task for task in tasks], os.fspath(self.work_dir)
            )
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=os.fspath(self.work_dir),
            max_trials_global=trials_per_task * len(tasks),
            max_trials_per_task=trials_per_task,
            num_trials_per_iter=min(trials_per_task, TRIALS_PER_ROUND),
            builder=self.builder,
            runner=self.runner,
            database=self.database,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), self.progress],
            # Each task gets its share anyway, so the gradient scheduler's choice gains nothing, and it
            # holds all results of its first pass over the tasks back: round-robin saves each round.
            task_scheduler="round-robin",
        )
        # The scheduler stops a task short of its share only when its search space ran out.
        mark_exhausted(self.work_dir, {task.key for task, share in zip(tasks, shares) if task.trials() < share})


@dataclasses.dataclass
class MetaScheduleTask:
    """A fused PrimFunc whose schedule MetaSchedule searches, its candidates in the JSON database."""

    task: ms.ExtractedTask
    run: _MetaScheduleRun

    @property
    def name(self) -> str:
        return self.task.task_name

    @property
    def calls(self) -> int:
        return self.task.weight

    @property
    def flop(self) -> float:
        return estimate_tir_flops(self.task.dispatched[0])

    @property
    def key(self) -> str:
        """Its workload hash, as the database keys its records."""
        return ms.utils.shash2hex(self.task.dispatched[0])

    def trials(self) -> int:
        return self.run.trials(self.key)

    def best_ms(self) -> float | None:
        """Mean latency of its fastest candidate in the database (top-k leaves failed ones out)."""
        database, mod = self.run.database, self.task.dispatched[0]
        records = database.get_top_k(database.commit_workload(mod), 1) if database.has_workload(mod) else []
        return 1e3 * sum(float(value) for value in records[0].run_secs) / len(records[0].run_secs) if records else None

    def missing(self, share: int) -> int:
        return 0 if self.key in exhausted_tasks(self.run.work_dir) else max(0, share - self.trials())

    @classmethod
    def tune(cls, tasks: Sequence[MetaScheduleTask], trials: Sequence[int]) -> None:
        """One scheduler run per number of trials missing (its per-task cap is one number)."""
        for count, group in _group_by_missing(tasks, trials).items():
            group[0].run.tune_group(group, count)


def tune(
    model: ir.Model,
    spec: TargetSpec,
    work_dir: str | os.PathLike,
    trials: int,
    rpc_address: RPCAddress | None = None,
    *,
    passes: Sequence[str] | str = DEFAULT_PASSES,
    debug: bool = False,
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
    session_timeout_s: float = SESSION_TIMEOUT_S,
) -> TuningSummary:
    """Tunes ``model`` (after the passes, as compile_model runs them) for ``spec`` with MetaSchedule.

    ``trials`` measured candidates, those in ``work_dir`` counted: a first round for every task, then
    the rest by the tasks' measured time (:func:`extra_trials`). They run on the device behind
    ``rpc_address`` (a tracker's ``HOST:PORT:KEY``), or on this host without it. Records go to
    ``work_dir`` as they come, so an interrupted run resumes and a re-run with as many trials measures
    nothing.
    """
    _check_request(spec, trials, rpc_address)
    runner = make_runner(rpc_address, session_timeout_s)  # checks the tracker and key before any work
    optimized, _ = optimize(model, passes, debug=debug, pass_options=pass_options)
    target = tuning_target(spec, rpc_address)
    imported = import_to_relax(optimized, spec.target)
    gated, work_dir = gated_workloads(imported, target), Path(work_dir)
    # A re-run resumes the directory's layout, so that its database still matches.
    conv_layout = tuned_conv_layout(work_dir, default=IMPORTED_CONV_LAYOUT if gated else DENSE_CONV_LAYOUT)
    tasks = extract_tasks(imported, spec, target, conv_layout)
    if not tasks and not gated:
        raise BackendError("the model has no functions to tune")
    work_dir.mkdir(parents=True, exist_ok=True)  # JSONDatabase does not create it
    record_conv_layout(work_dir, conv_layout)
    database = ms.database.JSONDatabase(work_dir=os.fspath(work_dir))
    records = GatedScheduleRecords(work_dir)
    with tqdm(desc=f"tuning {len(tasks) + len(gated)} tasks", unit="trial") as bar:
        progress, builder, sparsity = ProgressCallback(bar), make_builder(spec), measuring_sparsity(optimized)
        dense = _MetaScheduleRun(work_dir, database, builder, runner, progress)
        tuning_tasks: list[TuningTask] = [MetaScheduleTask(task, dense) for task in tasks]
        tuning_tasks += [
            GatedTask(workload, records, target, sparsity, builder, runner, progress.count) for workload in gated
        ]
        bar.total = max(0, trials - sum(task.trials() for task in tuning_tasks))
        _tune_up_to(tuning_tasks, [first_round(len(tuning_tasks), trials)] * len(tuning_tasks))
        counts = [task.trials() for task in tuning_tasks]
        extra = extra_trials(_times_ms(tuning_tasks), trials - sum(counts), counts)
        shares = [count + more for count, more in zip(counts, extra)]
        bar.total = bar.n + sum(task.missing(share) for task, share in zip(tuning_tasks, shares))
        bar.refresh()
        _tune_up_to(tuning_tasks, shares)
    results = [TaskResult(task.name, task.trials(), task.best_ms(), task.calls, task.flop) for task in tuning_tasks]
    choices = _measure_dense_alternatives(gated, records, work_dir, spec, rpc_address, sparsity, session_timeout_s)
    return TuningSummary(
        work_dir, target, conv_layout, results, progress.measured, progress.failed, choices.records if choices else {}
    )


def _measure_dense_alternatives(
    gated: Sequence,
    records: GatedScheduleRecords,
    work_dir: Path,
    spec: TargetSpec,
    rpc_address: RPCAddress | None,
    sparsity: float,
    session_timeout_s: float,
) -> KernelChoices | None:
    """The per-layer choice measured on the target: for each gated workload, a dense Conv of its shape
    tuned with as many trials as the gated kernel had (in work_dir/dense_alternatives/, resumed), its tuned
    time against the gated kernel's best at the calibrated ``sparsity``; written to kernel_choice.json."""
    if not gated:
        return None
    choices = KernelChoices(work_dir)
    for workload in gated:
        trials = max(1, len(records.measured(workload.key)))
        dense = tune(
            dense_conv_model(workload.shape),
            spec,
            dense_alternative_dir(work_dir, workload.key),
            trials,
            rpc_address,
            session_timeout_s=session_timeout_s,
        )
        choices.add(workload.key, dense.model_ms(), records.best_ms(workload.key), sparsity)
    choices.save()
    return choices


def _times_ms(tasks: Sequence[TuningTask]) -> list[float | None]:
    """Per task, its best time per model run (its calls counted); None for a task that cannot take more
    trials or has no time."""
    times = []
    for task in tasks:
        best = task.best_ms()
        times.append(None if task.missing(task.trials() + 1) == 0 or best is None else best * task.calls)
    return times


def _tune_up_to(tasks: Sequence[TuningTask], shares: Sequence[int]) -> None:
    """Measures each task's missing candidates for its share: the tasks of a kind together, each kind in
    the order of its first task."""
    kinds: dict[type, tuple[list[TuningTask], list[int]]] = {}
    for task, share in zip(tasks, shares):
        batch, missing = kinds.setdefault(type(task), ([], []))
        batch.append(task)
        missing.append(task.missing(share))
    for kind, (batch, missing) in kinds.items():
        kind.tune(batch, missing)


def _check_request(spec: TargetSpec, trials: int, rpc_address: RPCAddress | None) -> None:
    if spec.name not in TUNABLE_TARGETS:
        raise BackendError(
            f"--target {spec.name} cannot be tuned (tunable: {', '.join(TUNABLE_TARGETS)}); its builds use "
            "dlight schedules"
        )
    if trials < 1:
        raise BackendError(f"--trials {trials}: at least 1")
    if spec.name != "llvm" and rpc_address is None:
        raise BackendError(f"--target {spec.name} measures on the board: give its tracker with --rpc HOST:PORT:KEY")


def _group_by_missing(tasks: Sequence[MetaScheduleTask], missing: Sequence[int]) -> dict[int, list[MetaScheduleTask]]:
    """Tasks by the trials they miss (none: left out): one scheduler run a group, as its per-task cap is one number."""
    groups: dict[int, list[MetaScheduleTask]] = {}
    for task, count in zip(tasks, missing):
        if count > 0:
            groups.setdefault(count, []).append(task)
    return groups
