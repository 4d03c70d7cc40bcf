#!/usr/bin/env python3
"""Benchmarks, measured side by side in one run on this host (never part of the tests).

    python tools/bench.py                      # every section
    python tools/bench.py --sections models    # TVM (llvm, untuned) vs ONNX Runtime on the test nets
    python tools/bench.py --sections strip     # masked vs channel-stripped models, TVM and ONNX Runtime
    python tools/bench.py --sections tuned --trials 1000 --tuning-dir build/tuning   # tuned vs untuned TVM vs ORT
    python tools/bench.py --sections gated,sr-photo,strip-edsr   # the issue-23 baselines (dense as it deploys)
    python tools/bench.py --sections gated,sr-photo,strip-edsr --baseline-trials 200   # + tuned TVM, same trials

Every table names this host's CPU and its vector extensions: the ratios are this host's.

Each section prints a table whose ratios come from timings taken in this same run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from collections.abc import Callable
from pathlib import Path

from _cli import run_main
from tqdm import tqdm

from edgesparse.backends.timing import use_all_cores

SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {}


def section(name: str):
    def register(function: Callable[[argparse.Namespace], None]):
        SECTIONS[name] = function
        return function

    return register


def host_cpu() -> str:
    """This host's CPU model and vector extensions (AVX2, AVX-512, NEON), from /proc/cpuinfo."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    extensions = [
        name
        for name, flag in (("AVX2", "avx2"), ("FMA", "fma"), ("AVX-512F", "avx512f"), ("AVX-512 VNNI", "avx512_vnni"))
        if flag in flags
    ]
    extensions += ["NEON"] if {"asimd", "neon"} & flags else []
    cores = os.cpu_count()
    return f"{model}, {cores} cores, {platform.machine()} ({', '.join(extensions) or 'no AVX2/AVX-512/NEON'})"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n## {title}")
    print(f"host: {host_cpu()}")
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def bench_models() -> dict:
    """name -> onnx-ir model for the test nets and the real third-party CNN."""
    from edgesparse.frontends.torch_frontend import from_torch
    from edgesparse.frontends.zoo import ZOO, build_zoo_model

    models = {}
    for name in ZOO:
        module, example = build_zoo_model(name)
        models[name] = from_torch(module, example, input_names=["input"])
    from edgesparse.frontends.third_party import rapidocr_classifier

    models["rapidocr-cls"] = rapidocr_classifier()
    return models


@section("models")
def models_section(args: argparse.Namespace) -> None:
    """TVM (llvm, default pipeline, untuned) latency against ONNX Runtime's, per model at batch 1."""
    from edgesparse.backends import compile_model
    from edgesparse.passes.onnxruntime_ref import random_inputs

    rows = []
    for name, model in tqdm(bench_models().items(), desc="models", unit="model"):
        result = compile_model(model, "llvm")
        tvm_ms, ort_ms = latencies_ms(result, random_inputs(result.optimized), args)
        rows.append(
            [
                name,
                f"{result.report['macs_after'] / 1e6:.1f}",
                f"{tvm_ms:.3f}",
                f"{ort_ms:.3f}",
                f"{tvm_ms / ort_ms:.2f}",
            ]
        )
    print_table("TVM llvm (untuned) vs ONNX Runtime, batch 1", ["model", "MMACs", "TVM ms", "ORT ms", "TVM/ORT"], rows)


def timings(result, inputs: dict, args: argparse.Namespace, *other_executables) -> list:
    """[TVM, ONNX Runtime, each of ``other_executables``] timings of a compiled model at the same inputs,
    taken in alternation (``Timings``)."""
    from edgesparse.backends.timing import interleaved_timings, onnxruntime_timer, tvm_timer

    arrays = list(inputs.values())
    timers = [
        tvm_timer(result.build.executable, arrays, number=args.number),
        onnxruntime_timer(result.optimized, inputs, number=args.number),
    ]
    timers += [tvm_timer(executable, arrays, number=args.number) for executable in other_executables]
    return interleaved_timings(timers, args.repeat)


def latencies_ms(result, inputs: dict, args: argparse.Namespace, *other_executables) -> list[float]:
    """The median of each of :func:`timings`."""
    return [each.median_ms for each in timings(result, inputs, args, *other_executables)]


STRIP_MODELS = ("resnet", "mobilenetv2", "unet", "edsr", "rapidocr-cls")
STRIP_RATIOS = (0.3, 0.5, 0.7)


@section("strip")
def strip_section(args: argparse.Namespace) -> None:
    """Masked model vs the same model after strip-channels, at 30/50/70% of channels pruned by random masks
    (drawn per channel group, as a structured pruner prunes): TVM (llvm, untuned) and ONNX Runtime
    latency side by side, beside the speed-up the MACs promise."""
    from edgesparse.backends import compile_model
    from edgesparse.passes.channel_masks import insert_masks, mask_operands, random_masks
    from edgesparse.passes.onnxruntime_ref import random_inputs
    from edgesparse.passes.pipeline import run_pipeline

    models = {name: model for name, model in bench_models().items() if name in STRIP_MODELS}
    rows = []
    for (name, model), ratio in tqdm(list(itertools.product(models.items(), STRIP_RATIOS)), desc="strip", unit="model"):
        masked = run_pipeline(model.clone())
        insert_masks(masked, random_masks(masked, ratio, coupled=True))
        mask_values = [operands[1].const_value.numpy() for node in masked.graph if (operands := mask_operands(node))]
        pruned = 1 - sum(values.sum() for values in mask_values) / sum(values.size for values in mask_values)
        inputs = random_inputs(masked)
        masked_result = compile_model(masked, "llvm", passes="shape-inference")
        stripped_result = compile_model(masked, "llvm", passes="strip-channels")
        (tvm_masked, ort_masked), (tvm_stripped, ort_stripped) = (
            latencies_ms(result, inputs, args) for result in (masked_result, stripped_result)
        )
        report = stripped_result.report
        rows.append(
            [
                name,
                f"{ratio:.0%}",
                f"{pruned:.0%}",
                f"{report['macs_before'] / 1e6:.2f}",
                f"{report['macs_after'] / 1e6:.2f}",
                f"{report['macs_before'] / report['macs_after']:.2f}x",
                f"{tvm_masked:.3f}",
                f"{tvm_stripped:.3f}",
                f"{tvm_masked / tvm_stripped:.2f}x",
                f"{ort_masked:.3f}",
                f"{ort_stripped:.3f}",
                f"{ort_masked / ort_stripped:.2f}x",
            ]
        )
    header = [
        "model",
        "ratio",
        "pruned",
        "MMACs masked",
        "stripped",
        "MACs speed-up",
        "TVM masked ms",
        "stripped",
        "speed-up",
        "ORT masked ms",
        "stripped",
        "speed-up",
    ]
    print_table("strip-channels: masked vs stripped, batch 1 (TVM llvm untuned, ONNX Runtime)", header, rows)


# 0.5 .. 0.95: the levels; 0 and 0.3 locate the break-even with ONNX Runtime.
GATED_SPARSITIES = (0.0, 0.3, 0.5, 0.9, 0.95)


def tuned_result(model, name: str, args: argparse.Namespace, passes: str = "default", pass_options=None):
    """``model`` built with a MetaSchedule database tuned on this host with --baseline-trials trials in
    --tuning-dir/<name> (resumed), or None without --baseline-trials: every tuned figure of a table comes
    from the same number of trials."""
    if not args.baseline_trials:
        return None
    from edgesparse.backends import compile_model
    from edgesparse.backends.targets import resolve_target
    from edgesparse.backends.tuning import tune

    work_dir = args.tuning_dir / f"{name}-{args.baseline_trials}"
    tune(model, resolve_target("llvm"), work_dir, args.baseline_trials, passes=passes, pass_options=pass_options)
    return compile_model(model, "llvm", passes=passes, pass_options=pass_options, tuning_db=work_dir)


def dense_conv_models(weight, bias, shape) -> dict:
    """The dense 3x3 conv as a dense model deploys it, in ONNX Runtime: a plain ``Conv`` of the gated
    (ReLU'd) feature, and ``Conv`` + ``Relu`` (the next gate, fused into the conv by ONNX Runtime)."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    size = [shape.batch, shape.in_channels, shape.height, shape.width]
    out = [shape.batch, shape.out_channels, shape.out_height, shape.out_width]
    models = {}
    for name, relu in (("Conv", False), ("Conv+Relu", True)):
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if relu else "y"], pads=list(shape.pads))]
        nodes += [helper.make_node("Relu", ["c"], ["y"])] if relu else []
        graph = helper.make_graph(
            nodes,
            "dense_conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, size)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
        )
        models[name] = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return models


@section("gated")
def gated_section(args: argparse.Namespace) -> None:
    """Gated sparse 3x3 conv 64->64 on 1x64x128x128 (llvm) vs the dense conv as a dense model deploys it:
    the faster of ONNX Runtime's ``Conv`` and fused ``Conv``+``Relu`` (the headline), all timed in turns;
    tuned dense TVM (same conv, --baseline-trials) where asked, untuned dense TVM as a column (timed once)."""
    import numpy as np
    from tvm import relax

    from edgesparse.backends.gated_conv import GatedConvShape, default_schedule, effective_macs, standalone_module
    from edgesparse.backends.targets import resolve_target
    from edgesparse.backends.timing import interleaved_timings, onnxruntime_timer, tvm_latency_ms, tvm_timer
    from edgesparse.backends.tvm_build import build

    shape = GatedConvShape(1, 64, 64, 128, 128, (3, 3), pads=(1, 1, 1, 1))
    spec = resolve_target("llvm")
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal(shape.weight_shape) * 0.05).astype(np.float32)
    bias = rng.standard_normal(shape.out_channels).astype(np.float32)
    # Threshold 0 (a Relu gate); each feature is shifted so the wanted fraction of elements is <= 0,
    # element by element, so every pixel has its own random active set (active values are > 0).
    schedule = default_schedule(shape, spec.target)
    gated_kernel, masks_only, without_output = (
        relax.build(standalone_module(shape, 0.0, weight, bias, schedule, spec.target, phases), spec.target)
        for phases in ("all", "masks", "accumulate")
    )
    dense = dense_conv_models(weight, bias, shape)
    features = {}
    for sparsity in GATED_SPARSITIES:
        feature = rng.standard_normal((1, 64, 128, 128)).astype(np.float32)
        features[sparsity] = feature - np.quantile(feature, sparsity).astype(np.float32)
    # Untuned TVM is ~100x slower than the others and its time does not depend on the values: once.
    gated_input = np.maximum(features[0.5], 0)
    tvm_dense_ms = tvm_latency_ms(build(dense["Conv"], spec).executable, [gated_input], number=1, repeat=3)
    tuned = tuned_result(dense["Conv"], "dense-conv-64", args)
    rows, ratios = [], []
    for sparsity, feature in tqdm(features.items(), desc="gated", unit="level"):
        relu = np.maximum(feature, 0)
        timers = [tvm_timer(gated_kernel, [feature], number=args.number)]
        timers += [onnxruntime_timer(model, {"x": relu}, number=args.number) for model in dense.values()]
        timers += [tvm_timer(kernel, [feature], number=args.number) for kernel in (masks_only, without_output)]
        timers += [tvm_timer(tuned.build.executable, [relu], number=args.number)] if tuned else []
        gated, *others = (each.median_ms for each in interleaved_timings(timers, args.repeat))
        ort_conv, ort_relu, masks_ms, accumulated_ms = others[:4]
        others = others[:2] + others[4:]
        best_ort = min(ort_conv, ort_relu)
        ratios.append(best_ort / gated)
        rows.append(
            [
                f"{sparsity:.0%}",
                f"{shape.dense_macs / max(effective_macs(feature, shape, 0.0), 1):.1f}",
                f"{gated:.3f}",
                f"{masks_ms:.3f}",
                f"{accumulated_ms - masks_ms:.3f}",
                f"{gated - accumulated_ms:.3f}",
                f"{ort_conv:.3f}",
                f"{ort_relu:.3f}",
                f"{best_ort / gated:.2f}x",
                f"{others[2]:.3f}" if tuned else "-",
                f"{others[2] / gated:.2f}x" if tuned else "-",
                f"{tvm_dense_ms:.1f}",
            ]
        )
    header = [
        "sparsity",
        "MAC ratio",
        "gated ms",
        "masks ms",
        "accumulate ms",
        "NCHW out ms",
        "ORT Conv ms",
        "ORT Conv+Relu ms",
        "vs faster ORT",
        "TVM tuned dense ms",
        "vs tuned TVM",
        "TVM untuned dense ms",
    ]
    trials = f"{args.baseline_trials} trials" if args.baseline_trials else "not run: --baseline-trials 0"
    print_table(
        f"GatedConv 3x3 64->64, 1x64x128x128, llvm (default knobs) vs the dense conv as deployed (medians of "
        f"interleaved timings; tuned TVM: {trials}; untuned TVM timed once)",
        header,
        rows,
    )
    print(
        "phases: masks = the kernel stopped after the bit masks; accumulate = stopped before the NCHW output, "
        "minus masks; NCHW out = the whole kernel minus that (differences of medians: a small phase can read <= 0)"
    )
    print(f"break-even with the faster ONNX Runtime dense conv: {_break_even(list(features), ratios)}")


SR_MODEL = Path(__file__).resolve().parent.parent / "models" / "featreg-sr-x2.onnx"


def relu_gates(model):
    """A copy of ``model`` with every gate ``Where(Greater(x, t), x, 0)`` made ``Relu(x)``: the dense model
    as it deploys (ONNX Runtime fuses a Conv and its Relu)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    from edgesparse.passes.featreg import match_gate

    model = model.clone()
    for node in list(model.graph):
        gate = match_gate(node.outputs[0])
        if gate is None or node.op_type == "Relu":
            continue
        relu = ir.node("Relu", [gate.input], name=f"{node.name}_relu")
        relu.outputs[0].shape, relu.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        model.graph.insert_before(node, relu)
        node.outputs[0].replace_all_uses_with(relu.outputs[0])
        model.graph.remove(node, safe=True)
    RemoveUnusedNodesPass()(model)
    return model


def photo_crop(size: int = 256):
    """A size x size crop of scikit-image's astronaut photo, 1x3xHxW in [0, 1]."""
    import numpy as np
    from skimage import data

    image = data.astronaut()
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    crop = image[top : top + size, left : left + size].astype(np.float32) / 255
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None])


@section("sr-photo")
def sr_photo_section(args: argparse.Namespace) -> None:
    """models/featreg-sr-x2.onnx at levels 0.9 and 0.95 on a 1x3x256x256 photo crop: the gated build
    (llvm, default break-even) vs ONNX Runtime on the same model with ``Relu`` gates (the headline), and
    on the model as it is (``Where`` gates, unfused: the old, flattering baseline); tuned TVM for both where
    asked (--baseline-trials each)."""

    from edgesparse.backends import compile_model
    from edgesparse.backends.timing import interleaved_timings, onnxruntime_timer, tvm_timer
    from edgesparse.frontends import load_onnx, set_input_shapes
    from edgesparse.passes.featreg import FeatRegPass
    from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime

    photo = photo_crop(256)
    model = set_input_shapes(load_onnx(SR_MODEL), {"input": list(photo.shape)})
    dense = relu_gates(model)
    inputs = {"input": photo}
    tuned_dense = tuned_result(dense, "sr-x2-relu-256", args)
    rows = []
    for level in tqdm((0.9, 0.95), desc="sr-photo", unit="level"):
        # The level's thresholds come from the model's metadata; the crop only measures each layer's
        # sparsity (the report's MAC ratio, and which convs pass the break-even).
        options = {"featreg": {"sparsity": level, "calibrate": [inputs]}}
        gated = compile_model(model, "llvm", passes="default,featreg", pass_options=options)
        expected = run_onnxruntime(FeatRegPass(sparsity=level).expected_model(model), inputs)["output"]
        error = max_relative_error(gated.run(inputs)["output"], expected)
        tuned_gated = tuned_result(model, f"sr-x2-gated{level}-256", args, "default,featreg", options)
        timers = [tvm_timer(gated.build.executable, [photo], number=args.number)]
        timers += [onnxruntime_timer(each, inputs, number=args.number) for each in (dense, model)]
        tuned = [each for each in (tuned_gated, tuned_dense) if each is not None]
        timers += [tvm_timer(each.build.executable, [photo], number=args.number) for each in tuned]
        gated_ms, relu_ms, where_ms, *tuned_ms = (each.median_ms for each in interleaved_timings(timers, args.repeat))
        report = gated.report
        effective, layers = report.get("macs_effective"), report.get("layers", [])
        rows.append(
            [
                f"{level:.2f}",
                f"{sum(layer['op'] == 'GatedConv' for layer in layers)}/{len(layers)}",
                f"{report['macs_after'] / effective:.1f}x" if effective else "-",
                f"{error:.1e}",
                f"{gated_ms:.2f}",
                f"{relu_ms:.2f}",
                f"{where_ms:.2f}",
                f"{relu_ms / gated_ms:.2f}x",
                f"{where_ms / gated_ms:.2f}x",
                f"{tuned_ms[0]:.2f}" if tuned else "-",
                f"{tuned_ms[1]:.2f}" if tuned else "-",
                f"{tuned_ms[1] / tuned_ms[0]:.2f}x" if tuned else "-",
            ]
        )
    header = [
        "level",
        "gated convs",
        "MAC ratio",
        "max rel err",
        "gated ms",
        "ORT Relu-gates ms",
        "ORT Where-gates ms",
        "vs ORT Relu",
        "vs ORT Where",
        "TVM tuned gated ms",
        "TVM tuned dense ms",
        "tuned ratio",
    ]
    trials = f"{args.baseline_trials} trials each" if args.baseline_trials else "not run: --baseline-trials 0"
    print_table(
        f"featreg-sr-x2.onnx, 1x3x256x256 astronaut crop, llvm: gated build vs the dense model as deployed "
        f"(tuned TVM: {trials})",
        header,
        rows,
    )


STRIP_EDSR_KEPT = 26
STRIP_EDSR_ROUND_TO = (1, 8, 16)


@section("strip-edsr")
def strip_edsr_section(args: argparse.Namespace) -> None:
    """A 64-channel EDSR-style net (4 residual blocks, x2) at 1x3x128x128 with 38 of every 64-channel
    layer's channels masked (the same 26 kept everywhere, so the residual stream strips too): masked vs
    stripped with round_to 1, 8, 16, in ONNX Runtime (timed in turns) and in tuned TVM (--baseline-trials
    each, where asked); the MAC ratio beside the time ratio."""
    import numpy as np
    import torch

    from edgesparse.backends import compile_model
    from edgesparse.backends.timing import interleaved_timings, onnxruntime_timer, tvm_timer
    from edgesparse.frontends.torch_frontend import from_torch
    from edgesparse.frontends.zoo import EDSRStyle
    from edgesparse.passes.channel_masks import insert_masks
    from edgesparse.passes.channel_ops import channel_count, node_name
    from edgesparse.passes.macs import total_macs
    from edgesparse.passes.pipeline import run_pipeline

    torch.manual_seed(0)
    example = torch.rand(1, 3, 128, 128)
    model = run_pipeline(from_torch(EDSRStyle(width=64).eval(), example, input_names=["input"]))
    kept = sorted(np.random.default_rng(0).choice(64, STRIP_EDSR_KEPT, replace=False).tolist())
    masks = {
        node_name(node): kept
        for node in model.graph
        if node.op_type == "Conv" and channel_count(node.outputs[0]) == 64 and not node.outputs[0].is_graph_output()
    }
    insert_masks(model, masks)
    inputs = {"input": example.numpy()}
    variants = {"masked": compile_model(model, "llvm", passes="shape-inference")}
    options = {}
    for round_to in STRIP_EDSR_ROUND_TO:
        options[round_to] = {"strip-channels": {"round_to": round_to}}
        variants[f"round_to={round_to}"] = compile_model(
            model, "llvm", passes="strip-channels", pass_options=options[round_to]
        )
    timers = [onnxruntime_timer(result.optimized, inputs, number=args.number) for result in variants.values()]
    tuned = [tuned_result(model, "edsr64-masked", args, "shape-inference")]
    tuned += [tuned_result(model, f"edsr64-strip{n}", args, "strip-channels", options[n]) for n in STRIP_EDSR_ROUND_TO]
    if all(tuned):
        timers += [tvm_timer(result.build.executable, [inputs["input"]], number=args.number) for result in tuned]
    medians = [each.median_ms for each in interleaved_timings(timers, args.repeat)]
    ort, tvm = medians[: len(variants)], medians[len(variants) :]
    masked_macs = total_macs(variants["masked"].optimized)
    rows = []
    for index, (name, result) in enumerate(variants.items()):
        widths = sorted({channel_count(node.outputs[0]) for node in result.optimized.graph if node.op_type == "Conv"})
        mac_ratio = masked_macs / total_macs(result.optimized)
        rows.append(
            [
                name,
                ",".join(map(str, widths)),
                f"{total_macs(result.optimized) / 1e9:.2f}",
                f"{mac_ratio:.2f}x",
                f"{ort[index]:.2f}",
                f"{ort[0] / ort[index]:.2f}x",
                f"{ort[0] / ort[index] / mac_ratio:.0%}",
                f"{tvm[index]:.2f}" if tvm else "-",
                f"{tvm[0] / tvm[index]:.2f}x" if tvm else "-",
                f"{tvm[0] / tvm[index] / mac_ratio:.0%}" if tvm else "-",
            ]
        )
    header = [
        "model",
        "conv widths",
        "GMACs",
        "MAC ratio",
        "ORT ms",
        "ORT time ratio",
        "of MAC ratio",
        "TVM tuned ms",
        "TVM time ratio",
        "of MAC ratio",
    ]
    trials = f"{args.baseline_trials} trials each" if args.baseline_trials else "not run: --baseline-trials 0"
    print_table(
        f"EDSR-style 64 ch x2, 1x3x128x128, {STRIP_EDSR_KEPT} of 64 kept: masked vs stripped (round_to), "
        f"medians of interleaved timings (tuned TVM: {trials})",
        header,
        rows,
    )


def _break_even(sparsities: list[float], speedups: list[float]) -> str:
    """Sparsity where the speed-up crosses 1, interpolated between the measured levels."""
    for (s0, r0), (s1, r1) in zip(zip(sparsities, speedups), zip(sparsities[1:], speedups[1:])):
        if r0 < 1 <= r1:
            return f"{s0 + (1 - r0) / (r1 - r0) * (s1 - s0):.0%} sparsity"
    return "faster at every level" if speedups[0] >= 1 else "slower at every level"


TUNED_MODELS = ("resnet", "mobilenetv2", "edsr")


MATMUL_SIZE = 2048


def matmul_gflops(repeat: int = 10) -> float:
    """This host's float32 matmul rate (the best of ``repeat``), a practical ceiling for the rate of a
    conv net, whose convs are matmuls too: a tuned net near it cannot get much faster."""
    import timeit

    import numpy as np

    a, b = np.random.default_rng(0).random((2, MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    a @ b  # warm-up: BLAS threads and pages
    return 2 * MATMUL_SIZE**3 / min(timeit.repeat(lambda: a @ b, number=1, repeat=repeat)) / 1e9


@section("tuned")
def tuned_section(args: argparse.Namespace) -> None:
    """Tuned TVM (llvm, a MetaSchedule database per model) vs untuned TVM vs ONNX Runtime, batch 1. Each
    model is first tuned on this host up to --trials in --tuning-dir/<model>: a database that a
    tools/tune.py run or an interrupted bench left there counts, so only what is missing is tuned."""
    from edgesparse.backends import compile_model
    from edgesparse.backends.targets import resolve_target
    from edgesparse.backends.tuning import tune
    from edgesparse.passes.onnxruntime_ref import random_inputs

    print(
        f"this host's float32 matmul (numpy's BLAS, {MATMUL_SIZE}x{MATMUL_SIZE}, every core): "
        f"{matmul_gflops():.0f} GFLOP/s"
    )
    rows = []
    for name, model in bench_models().items():
        if name not in TUNED_MODELS:
            continue
        summary = tune(model, resolve_target("llvm"), args.tuning_dir / name, args.trials)
        result = compile_model(model, "llvm", tuning_db=summary.work_dir)
        tuned, ort, untuned = timings(
            result, random_inputs(result.optimized), args, compile_model(model, "llvm").build.executable
        )
        flops = 2 * result.report["macs_after"]
        rows.append(
            [
                name,
                f"{len(result.build.tuned_functions)}/{len(summary.tasks)}",
                str(sum(task.trials for task in summary.tasks)),
                f"{untuned.median_ms:.3f}",
                f"{tuned.median_ms:.3f}",
                f"{summary.model_ms() or math.nan:.3f}",
                f"{ort.median_ms:.3f}",
                f"{untuned.median_ms / tuned.median_ms:.1f}x",
                f"{tuned.median_ms / ort.median_ms:.2f}",
                f"{tuned.fastest_block_ms:.3f}",
                f"{ort.fastest_block_ms:.3f}",
                f"{tuned.fastest_block_ms / ort.fastest_block_ms:.2f}",
                f"{flops / tuned.median_ms / 1e6:.0f}",
                f"{flops / ort.median_ms / 1e6:.0f}",
            ]
        )
    # Medians of all timings, then of each runtime's fastest block (Timings.fastest_block_ms). "kernels
    # alone": the tasks' best times in the database, each kernel timed alone when it was tuned.
    header = [
        "model",
        "tuned tasks",
        "trials",
        "untuned ms",
        "tuned ms",
        "kernels alone ms",
        "ORT ms",
        "tuning speed-up",
        "tuned/ORT",
        "tuned fastest-block ms",
        "ORT fastest-block ms",
        "tuned/ORT fastest blocks",
        "tuned GFLOP/s",
        "ORT GFLOP/s",
    ]
    print_table(
        f"TVM llvm tuned (MetaSchedule, up to {args.trials} trials a model, {args.tuning_dir}) vs untuned vs "
        "ONNX Runtime, batch 1",
        header,
        rows,
    )


FEATREG_NET_LEVELS = (0.6, 0.8, 0.9, 0.95)


@section("featreg-net")
def featreg_net_section(args: argparse.Namespace) -> None:
    """A whole FeatReg EDSR-style SR net (x2, 64 channels, 4 residual blocks, 1x3x128x128 in), random
    weights, thresholds calibrated per level on random inputs: the featreg build (gated kernels, llvm)
    vs the dense build in TVM (untuned) and vs ONNX Runtime on the dense model."""

    import numpy as np
    import torch

    from edgesparse.backends import compile_model
    from edgesparse.backends.timing import onnxruntime_latency_ms, tvm_latency_ms
    from edgesparse.frontends.featreg.nets import FeatRegEDSR
    from edgesparse.frontends.torch_frontend import from_torch

    torch.manual_seed(0)
    model = from_torch(
        FeatRegEDSR(width=64).eval(), torch.rand(1, 3, 128, 128), input_names=["input"], output_names=["output"]
    )
    rng = np.random.default_rng(0)
    inputs = {"input": rng.random((1, 3, 128, 128), dtype=np.float32)}
    dense = compile_model(model, "llvm")
    ort_ms = onnxruntime_latency_ms(dense.optimized, inputs, number=args.number, repeat=args.repeat)
    tvm_dense_ms = tvm_latency_ms(dense.build.executable, [inputs["input"]], number=1, repeat=3)
    rows = []
    calibration = [{"input": rng.random((1, 3, 128, 128), dtype=np.float32)} for _ in range(2)]
    for level in tqdm(FEATREG_NET_LEVELS, desc="featreg-net", unit="level"):
        options = {"sparsity": level, "calibrate": calibration, "min_sparsity": 0.0}
        gated = compile_model(model, "llvm", passes="default,featreg", pass_options={"featreg": options})
        gated_ms = tvm_latency_ms(gated.build.executable, [inputs["input"]], number=args.number, repeat=args.repeat)
        report = gated.report
        measured = np.mean([layer["input_sparsity"] for layer in report["layers"]])
        rows.append(
            [
                f"{level:.0%}",
                f"{measured:.1%}",
                f"{report['macs_after'] / 1e9:.2f}",
                f"{report['macs_effective'] / 1e9:.2f}",
                f"{report['macs_after'] / report['macs_effective']:.1f}x",
                f"{gated_ms:.1f}",
                f"{ort_ms:.1f}",
                f"{tvm_dense_ms:.1f}",
                f"{ort_ms / gated_ms:.2f}x",
                f"{tvm_dense_ms / gated_ms:.1f}x",
            ]
        )
    header = [
        "level",
        "measured",
        "GMACs dense",
        "effective",
        "MAC ratio",
        "gated ms",
        "ORT dense ms",
        "TVM dense ms",
        "vs ORT",
        "vs TVM",
    ]
    print_table("FeatReg EDSR x2 (64 ch, 4 blocks) 1x3x128x128, llvm: gated build vs dense", header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    parser.add_argument("--number", type=int, default=10, help="calls per timing")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help=(
            "timings per figure, taken in turn with those of the figures it is compared with (the median is "
            "shown; the tuned section also shows each runtime's fastest block of them)"
        ),
    )
    parser.add_argument(
        "--tuning-dir",
        type=Path,
        default=Path("build/tuning"),
        help="tuned: the tuning directories, one per model (kept and resumed)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=1000,
        help="tuned: MetaSchedule trials a model (a round per task, the rest by measured time)",
    )
    parser.add_argument(
        "--baseline-trials",
        type=int,
        default=0,
        help=(
            "gated, sr-photo, strip-edsr: tune every TVM build compared (dense and gated, masked and stripped) "
            "with this many MetaSchedule trials in --tuning-dir (default 0: no tuned TVM columns)"
        ),
    )
    args = parser.parse_args()
    threads = use_all_cores()
    print(f"threads: {threads} (TVM_NUM_THREADS and ONNX Runtime intra-op)")
    for name in args.sections.split(","):
        SECTIONS[name](args)
    return 0


if __name__ == "__main__":
    run_main(main)
