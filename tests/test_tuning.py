"""MetaSchedule tuning: on the emulated aarch64 device through the tracker (one server, then two under
one key), on this host, resumed, and the errors a user meets; then builds with the database.
Trials are tiny (CI has 2 cores): these prove the plumbing, not the speed (tools/bench.py --sections tuned)."""

import json
from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from conftest import free_port, run_tool, save_model, set_up_device
from onnx import TensorProto, helper, numpy_helper

from edgesparse.backends import compile_model, tuning
from edgesparse.backends.relax_import import import_to_relax
from edgesparse.backends.rpc import RPCAddress
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tuning import CANDIDATE_FILE, extra_trials, first_round, tune
from edgesparse.backends.tvm_build import CONV_LAYOUT_FILE, fuse, tuned_conv_layout
from edgesparse.passes import EdgesparseError
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime


def conv_net(convs: int, channels: int = 8, size: int = 12) -> ir.Model:
    """Conv(3x3) + Relu, ``convs`` times: one tuning task per distinct conv shape."""
    rng = np.random.default_rng(0)
    nodes, weights, previous, cin = [], [], "input", 3
    for i in range(convs):
        weights += [
            numpy_helper.from_array((rng.standard_normal((channels, cin, 3, 3)) * 0.2).astype(np.float32), f"w{i}"),
            numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), f"b{i}"),
        ]
        output = "output" if i == convs - 1 else f"relu{i}"
        nodes += [
            helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"conv{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{i}"], [output]),
        ]
        previous, cin = output, channels
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, size, size])],
        weights,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def candidate_loads(device) -> list[int]:
    """Per emulated server, the tuning candidates its log shows it loaded (one per measurement there)."""
    return [
        sum(
            1
            for line in log.read_text().splitlines()
            if "load_module" in line and line.rstrip().endswith(f"/{CANDIDATE_FILE}")
        )
        for log in sorted(device.run_dir.glob("server-*.log"))
    ]


def database_records(directory) -> list:
    return [json.loads(line) for line in (directory / "database_tuning_record.json").read_text().splitlines()]


def assert_matches_onnxruntime(model: ir.Model, run) -> None:
    inputs = random_inputs(model, seed=5)
    assert max_relative_error(run(inputs)["output"], run_onnxruntime(model, inputs)["output"]) < 1e-4


def assert_weights_prepacked(build, tasks) -> None:
    functions = {gvar.name_hint for gvar, _ in build.lowered.functions_items()}
    # Each tuned conv reads its weight in the layout its schedule chose (MetaSchedule's RewriteLayout)...
    convs = {f"{task.name}_prepacked" for task in tasks if "conv2d" in task.name}
    assert convs and convs <= functions
    # ...relaid once, by FoldConstant at build time: the model's run never calls a relayout.
    assert "_weight_prepack" not in build.lowered["main"].script()


@pytest.mark.tuning
def test_tuning_on_the_device_then_the_tuned_build_runs_there(emulated_device, tmp_path):
    model, address = conv_net(1), RPCAddress.parse(emulated_device.rpc_address)
    loads_before = candidate_loads(emulated_device)
    summary = tune(model, resolve_target("arm_cpu"), tmp_path / "tuning", trials=2, rpc_address=address)
    assert (summary.measured, summary.failed) == (2, 0)
    # Every measurement came from the device: each candidate was loaded by the emulated server, and the
    # database holds exactly those measurements.
    assert [after - before for after, before in zip(candidate_loads(emulated_device), loads_before)] == [2]
    assert len(database_records(tmp_path / "tuning")) == 2
    # In NHWC: the conv (reading the model's NCHW input itself), and the transpose back to NCHW, a trial each.
    assert summary.conv_layout == "NHWC" and len(summary.tasks) == 2
    assert all(task.trials == 1 and task.best_ms > 0 for task in summary.tasks)

    result = compile_model(model, "arm_cpu", tuning_db=tmp_path / "tuning")
    assert result.build.tuned_functions == sorted(task.name for task in summary.tasks)
    assert_weights_prepacked(result.build, summary.tasks)
    artefact = result.save(tmp_path / "build")
    assert_matches_onnxruntime(model, lambda inputs: artefact.run(inputs, address))


@pytest.mark.tuning
def test_gated_kernel_knobs_are_measured_on_the_device(emulated_device, tmp_path):
    model, address = gated_net(), RPCAddress.parse(emulated_device.rpc_address)
    loads_before = candidate_loads(emulated_device)
    summary = tune(
        model, resolve_target("arm_cpu"), tmp_path / "tuning", trials=2, rpc_address=address, passes="default,featreg"
    )
    assert (summary.measured, summary.failed) == (2, 0) and summary.tasks[0].best_ms > 0
    # The gated kernel's 2 candidates, then the dense conv of its shape tuned with as many (the per-layer
    # choice): all 4 loaded by the device, and both best times recorded.
    assert [after - before for after, before in zip(candidate_loads(emulated_device), loads_before)] == [4]
    [choice] = summary.kernel_choices.values()
    assert choice["dense_ms"] > 0 and choice["gated_ms"] > 0 and choice["choice"] in ("dense", "gated")
    artefact = compile_model(model, "arm_cpu", passes="default,featreg", tuning_db=tmp_path / "tuning").save(
        tmp_path / "build"
    )
    assert_matches_onnxruntime(model, lambda inputs: artefact.run(inputs, address))


@pytest.mark.device
@pytest.mark.tuning
def test_two_devices_under_one_key_both_measure(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "DENSE_CONV_LAYOUT", "NCHW")  # one task: the four trials all its
    port = free_port(count=3)  # the tracker's, then two servers'
    farm = set_up_device(port, port + 1)
    with farm.running(n_servers=2):
        summary = tune(
            conv_net(1),
            resolve_target("arm_cpu"),
            tmp_path / "tuning",
            trials=4,
            rpc_address=RPCAddress.parse(farm.rpc_address),
        )
        loads = candidate_loads(farm)
    assert (summary.measured, summary.failed) == (4, 0)
    assert sum(loads) == 4 and len(loads) == 2 and min(loads) > 0, loads


@pytest.fixture(scope="module")
def host_tuning(tmp_path_factory):
    """A two-task model tuned on this host, 4 trials in rounds of one (so that the trials after the
    first round are shared by time too), its convs in NCHW (two tasks, no transposes): (model file,
    tuning directory, summary)."""
    directory = tmp_path_factory.mktemp("host")
    model_path = save_model(conv_net(2), directory / "conv2.onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tuning, "DENSE_CONV_LAYOUT", "NCHW")
        patch.setattr(tuning, "FIRST_ROUND_TRIALS", 1)
        patch.setattr(tuning, "TRIALS_PER_ROUND", 1)
        summary = tune(conv_net(2), resolve_target("llvm"), directory / "tuning", trials=4)
    return model_path, directory / "tuning", summary


@pytest.mark.tuning
def test_host_tuning_then_compile_with_the_database(host_tuning, tmp_path):
    model_path, tuning_dir, summary = host_tuning
    assert (summary.measured, summary.failed) == (4, 0) and len(summary.tasks) == 2
    result = run_tool("compile", model_path, "--target", "llvm", "--tuning-db", tuning_dir, "-o", tmp_path / "build")
    assert result.returncode == 0, result.stderr
    assert (
        "tuned schedules from" in result.stdout
        and ": 2 functions" in result.stdout
        and "convs in NCHW" in result.stdout
    )
    run = run_tool("run", tmp_path / "build", "--check")
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.split("max relative difference to ONNX Runtime, output: ")[1].split()[0]) < 1e-4


@pytest.mark.tuning
def test_the_summary_tells_each_tasks_rate_and_the_kernels_time_a_run(host_tuning):
    _, _, summary = host_tuning
    # conv_net(2): conv 3->8 then 8->8, 3x3 on 12x12, each with its bias add and relu (an op a value each).
    conv_flop = [2 * 12 * 12 * 8 * cin * 9 + 2 * 12 * 12 * 8 for cin in (3, 8)]
    assert sorted(task.flop for task in summary.tasks) == conv_flop
    assert all(
        task.calls == 1 and task.gflops == pytest.approx(task.flop / task.best_ms / 1e6) for task in summary.tasks
    )
    assert summary.model_ms() == pytest.approx(sum(task.best_ms for task in summary.tasks))


@pytest.mark.tuning
def test_tuned_convolutions_read_weights_prepacked_at_build_time(host_tuning):
    _, tuning_dir, summary = host_tuning
    assert_weights_prepacked(compile_model(conv_net(2), "llvm", tuning_db=tuning_dir).build, summary.tasks)


@pytest.mark.parametrize("layout, conv_output", [("NCHW", "(1, 8, 12, 12)"), ("NHWC", "(1, 12, 12, 8)")])
def test_the_convs_take_the_layout_asked_and_the_output_keeps_the_models(layout, conv_output):
    spec = resolve_target("llvm")
    main = fuse(import_to_relax(conv_net(1), spec.target), spec, layout)["main"]
    conv_calls = [line for line in main.script().splitlines() if "call_tir" in line and "conv2d" in line]
    assert conv_calls and all(f"out_ty=R.Tensor({conv_output}" in line for line in conv_calls)
    assert [int(dim) for dim in main.ret_ty.shape] == [1, 8, 12, 12]


@pytest.mark.tuning
def test_dense_convs_are_tuned_and_built_in_nhwc(tmp_path):
    summary = tune(conv_net(2), resolve_target("llvm"), tmp_path / "tuning", trials=4)
    assert summary.conv_layout == tuned_conv_layout(tmp_path / "tuning") == "NHWC"
    tuned = compile_model(conv_net(2), "llvm", tuning_db=tmp_path / "tuning")
    assert tuned.report["conv_layout"] == "NHWC"
    assert "R.Tensor((1, 12, 12, 8)" in tuned.build.lowered["main"].script()  # the convs' outputs
    assert tuned.build.tuned_functions == sorted(task.name for task in summary.tasks)
    assert_matches_onnxruntime(conv_net(2), tuned.run)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ('{"conv2d": "NCHW16c"}', r"unknown conv2d layout 'NCHW16c' \(known: NCHW, NHWC\)"),
        ("NHWC", "not a conv layout record"),
        ("[]", "not a conv layout record"),
    ],
)
def test_a_bad_conv_layout_record_is_one_error_line(record, message, tmp_path):
    (tmp_path / CONV_LAYOUT_FILE).write_text(record)
    with pytest.raises(EdgesparseError, match=f"conv_layout.json: {message}"):
        tuned_conv_layout(tmp_path)


@pytest.mark.tuning
def test_a_second_run_with_the_same_trials_measures_nothing(host_tuning):
    model_path, tuning_dir, _ = host_tuning
    records = database_records(tuning_dir)
    result = run_tool("tune", model_path, "--target", "llvm", "--trials", "2", "-o", tuning_dir)
    assert result.returncode == 0, result.stderr
    assert "measured 0 candidates on this host" in result.stdout
    assert (
        result.stdout.count(" GFLOP/s)") == 2 and "the tasks' best times, each timed alone, add up to" in result.stdout
    )
    assert database_records(tuning_dir) == records


@pytest.mark.tuning
def test_after_a_round_each_the_trials_go_by_measured_time(host_tuning):
    _, tuning_dir, _ = host_tuning
    first_ms, counts = {}, Counter()
    for workload, (_, run_secs, *_) in database_records(tuning_dir):  # in the order they were measured
        first_ms.setdefault(workload, 1e3 * float(np.mean([float(value) for value in run_secs])))
        counts[workload] += 1
    workloads = sorted(first_ms)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tuning, "TRIALS_PER_ROUND", 1)
        expected = extra_trials([first_ms[workload] for workload in workloads], 2, [1] * len(workloads))
    assert [counts[workload] - 1 for workload in workloads] == expected


def test_every_task_gets_a_round_first_or_an_even_split_of_fewer_trials():
    assert first_round(tasks=3, trials=600) == 16
    assert first_round(tasks=3, trials=9) == 3
    assert first_round(tasks=3, trials=2) == 1  # too few for a trial each: one each


def test_the_other_trials_go_by_measured_time_in_whole_rounds():
    # 100 trials are 3 rounds of 32: 0.75 and 2.25 by time, each round to the task furthest below its
    # share; the 4 left over are no round. A task without a time (exhausted, or nothing ran) gets none.
    assert extra_trials([None, 1.0, 3.0], 100) == [0, 32, 64]
    assert extra_trials([2.0, 2.0], 64) == [32, 32]
    assert extra_trials([5.0, 1.0], 31) == [0, 0]
    assert extra_trials([None, None], 640) == [0, 0]


def test_a_task_new_to_a_resumed_database_catches_up_with_its_share_of_all_trials():
    # Equal times, 320 + 16 trials held. 4 rounds more (464 in all, 232 each): every one to the new task,
    # still below its share, where a split of the 128 left gave it half. 12 rounds more (720 in all, 360
    # each): the new task catches up, then the rounds go to whichever is further below.
    assert extra_trials([1.0, 1.0], 128, counts=[320, 16]) == [0, 128]
    assert extra_trials([1.0, 1.0], 384, counts=[320, 16]) == [32, 352]


@pytest.mark.tuning
def test_failed_candidates_count_as_failed_and_are_never_applied(monkeypatch, tmp_path):
    make_builder = tuning.make_builder

    def builder_whose_builds_time_out(spec):
        # Set after the constructor: its sanity check of the workers runs under the same timeout, and
        # on a loaded host a worker can take more than 1 ms to answer it.
        builder = make_builder(spec)
        builder.timeout_sec = 0.001
        return builder

    monkeypatch.setattr(tuning, "make_builder", builder_whose_builds_time_out)
    model = conv_net(1)
    summary = tune(model, resolve_target("llvm"), tmp_path / "tuning", trials=2)  # a trial per task
    assert (summary.measured, summary.failed) == (2, 2) and all(task.best_ms is None for task in summary.tasks)
    assert compile_model(model, "llvm", tuning_db=tmp_path / "tuning").build.tuned_functions == []


def gated_net(channels: int = 16, size: int = 12) -> ir.Model:
    """Relu -> Conv 3x3: after the featreg pass one GatedConv, the only function to tune."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["input"], ["gated"]),
            helper.make_node("Conv", ["gated", "w", "b"], ["output"], pads=[1, 1, 1, 1]),
        ],
        "gated_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, size, size])],
        [
            numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.2).astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(channels, np.float32), "b"),
        ],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.tuning
def test_gated_kernels_are_tuned_by_their_knobs_and_builds_take_the_fastest(monkeypatch, tmp_path):
    from edgesparse.backends import relax_import
    from edgesparse.backends.gated_conv import GatedConvSchedule, GatedConvShape, default_schedule, schedule_space
    from edgesparse.backends.gated_tuning import SCHEDULES_FILE

    model, spec = gated_net(), resolve_target("llvm")
    summary = tune(model, spec, tmp_path / "tuning", trials=3, passes="default,featreg")
    assert [(task.name, task.trials) for task in summary.tasks] == [("gated_conv 16->16 3x3 on 12x12", 3)]
    assert summary.failed == 0 and summary.tasks[0].best_ms > 0
    assert summary.tasks[0].gflops is None  # its work depends on the input's sparsity
    assert tuned_conv_layout(tmp_path / "tuning") == "NCHW"  # the gated kernels read NCHW
    [records] = json.loads((tmp_path / "tuning" / SCHEDULES_FILE).read_text()).values()
    shape = GatedConvShape(1, 16, 16, 12, 12, (3, 3), pads=(1, 1, 1, 1))
    measured = [GatedConvSchedule(**record["schedule"]) for record in records]
    assert measured[0] == default_schedule(shape, spec.target) and set(measured) <= set(
        schedule_space(shape, spec.target)
    )
    assert min(record["ms"] for record in records) == pytest.approx(summary.tasks[0].best_ms)

    fastest = min(records, key=lambda record: record["ms"])["schedule"]
    built_with, make_kernel = [], relax_import.gated_conv2d
    monkeypatch.setattr(
        relax_import,
        "gated_conv2d",
        lambda shape, threshold, schedule, target, **fused: (
            built_with.append(schedule) or make_kernel(shape, threshold, schedule, target, **fused)
        ),
    )
    tuned = compile_model(model, "llvm", passes="default,featreg", tuning_db=tmp_path / "tuning")
    # The per-layer choice: a dense conv of the same shape tuned with as many trials, the faster one kept.
    [choice] = summary.kernel_choices.values()
    assert choice["gated_ms"] == pytest.approx(summary.tasks[0].best_ms) and choice["dense_ms"] > 0
    assert choice["choice"] == ("gated" if choice["gated_ms"] < choice["dense_ms"] else "dense")
    assert built_with == ([GatedConvSchedule(**fastest)] if choice["choice"] == "gated" else [])
    assert_matches_onnxruntime(model, tuned.run)


@pytest.mark.slow
def test_an_unreachable_tracker_is_one_error_line(tmp_path):
    model = save_model(conv_net(1), tmp_path / "conv.onnx")
    port = free_port()
    result = run_tool(
        "tune",
        model,
        "--target",
        "arm_cpu",
        "--rpc",
        f"127.0.0.1:{port}:arm64-qemu",
        "--trials",
        "2",
        "-o",
        tmp_path / "tuning",
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: RPC tracker at 127.0.0.1:{port} does not answer (Connection refused)"
    ]


def test_a_key_no_device_serves_is_one_error_line(emulated_device, tmp_path):
    model = save_model(conv_net(1), tmp_path / "conv.onnx")
    tracker = emulated_device.rpc_address.rsplit(":", 1)[0]
    result = run_tool(
        "tune",
        model,
        "--target",
        "arm_cpu",
        "--rpc",
        f"{tracker}:pixel-farm",
        "--trials",
        "2",
        "-o",
        tmp_path / "tuning",
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: RPC tracker at {tracker} has no device with key 'pixel-farm' (keys: arm64-qemu)"
    ]


@pytest.mark.parametrize(
    ("target", "message"),
    [("arm_cpu", "measures on the board: give its tracker with --rpc"), ("cuda", "cannot be tuned")],
)
def test_targets_that_cannot_be_tuned_here_are_named(target, message, tmp_path):
    with pytest.raises(EdgesparseError, match=message):
        tune(conv_net(1), resolve_target(target), tmp_path / "tuning", trials=1)
