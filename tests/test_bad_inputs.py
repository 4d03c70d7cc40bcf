"""Bad input, as a new user types it: one table over every tool (issue 26).

Each bad case must exit 2 with exactly one ``error:`` line on stderr that names the culprit (the flag, the
file, the node or the input), print no traceback, and leave the output path byte for byte as it was (absent
stays absent, an existing directory keeps its files). Odd but valid inputs (NaN inputs, a model without
gates, a flat photo) succeed and say so with a ``warning:`` line.

Every case is a subprocess (about 3 s each on a 2-core machine): the whole table is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, free_port, run_tool, save_model
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

pytestmark = pytest.mark.slow

SR_MODEL = REPO / "models" / "featreg-sr-x2.onnx"
OPSET = [helper.make_opsetid("", 17)]


# --- the bad (and odd) files, built once --------------------------------------------------------------


def conv_model(*, relu: bool, external: str | None = None) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(3->4, 3x3, pad 1) [-> Relu] -> Conv(4->2, 3x3, no pad) -> y; weights inline or
    external. An input smaller than 3x3 leaves the second conv's output empty."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 3, 3)).astype(np.float32), "w2")
    if external is not None:
        for tensor in (w1, w2):
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value=external)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    if relu:
        nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes.append(helper.make_node("Conv", ["r1" if relu else "c1", "w2"], ["y"], name="conv2"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
        initializer=[w1, w2],
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def dangling_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "ghost"], ["y"], name="add_ghost")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def unsupported_op_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Det", ["r"], ["y"], name="determinant"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def dynamic_pad_model() -> onnx.ModelProto:
    """A Pad whose pads are a graph input: nothing to fold, and TVM's importer takes constant pads only."""
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], name="dynamic_pad")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
            helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


PLUGINS = {
    "raises.py": "raise RuntimeError('plugin boom')\n",
    "syntax.py": "def broken(:\n",
    "pass_raises.py": (
        "import onnx_ir as ir\n"
        "from edgesparse.passes import register_pass\n\n\n"
        "@register_pass('explode')\n"
        "class Explode(ir.passes.InPlacePass):\n"
        "    def call(self, model):\n"
        "        raise ZeroDivisionError('pass boom')\n"
    ),
    "pass_breaks.py": (
        "import onnx_ir as ir\n"
        "from edgesparse.passes import register_pass\n\n\n"
        "@register_pass('vandal')\n"
        "class Vandal(ir.passes.InPlacePass):\n"
        "    def call(self, model):\n"
        "        last = list(model.graph)[-1]\n"
        "        model.graph.remove(last, safe=False)\n"
        "        return ir.passes.PassResult(model, True)\n"
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every input file the cases read, built once (the artefacts with one compile)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    paths: dict[str, Path] = {}
    tiny = root / "tiny.onnx"
    assert run_tool("zoo", "tiny", "-o", tiny).returncode == 0
    paths["tiny"] = tiny
    build = root / "build"
    compiled = run_tool("compile", tiny, "--target", "llvm", "-o", build)
    assert compiled.returncode == 0, compiled.stderr
    paths["build"] = build

    def artefact_variant(name: str, change: Callable[[Path], None]) -> None:
        shutil.copytree(build, root / name)
        change(root / name)
        paths[name] = root / name

    artefact_variant("corrupt_report", lambda d: (d / "report.json").write_text('{"target": "llvm", '))

    def drop_key(directory: Path) -> None:
        report = json.loads((directory / "report.json").read_text())
        del report["inputs"]
        (directory / "report.json").write_text(json.dumps(report))

    artefact_variant("report_without_inputs", drop_key)
    artefact_variant("so_not_a_library", lambda d: (d / "model.so").write_bytes(b"not an ELF file\n"))

    def as_arm(directory: Path) -> None:  # what compile --target arm_cpu writes; run on the host without --rpc
        report = json.loads((directory / "report.json").read_text())
        report.update(target="arm_cpu", device="arm/rasp4b64")
        (directory / "report.json").write_text(json.dumps(report))

    artefact_variant("arm_build", as_arm)

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(root / "extra.npz", input=x, bonus=x)
    np.savez(root / "int64.npz", input=x.astype(np.int64))
    np.savez(root / "complex.npz", input=x.astype(np.complex64))
    np.savez(root / "string.npz", input=np.full((1, 3, 32, 32), "a"))
    np.save(root / "plain.npy", x)
    paths.update({name: root / f"{name}.npz" for name in ("extra", "int64", "complex", "string")})
    paths["npy"] = root / "plain.npy"
    nan_x = x.copy()
    nan_x[0, 0, 0, 0] = np.nan
    np.savez(root / "nan.npz", input=nan_x)
    paths["nan"] = root / "nan.npz"
    np.savez(root / "calib_names.npz", image=x)
    np.savez(root / "calib_shapes.npz", input=x[:, :, :16, :16])
    paths["calib_names"], paths["calib_shapes"] = root / "calib_names.npz", root / "calib_shapes.npz"

    paths["dangling"] = save_model(dangling_model(), root / "dangling.onnx")
    paths["external"] = save_model(conv_model(relu=True, external="weights.bin"), root / "external.onnx")
    paths["no_gates"] = save_model(conv_model(relu=False), root / "no_gates.onnx")
    paths["det"] = save_model(unsupported_op_model(), root / "det.onnx")
    paths["dynamic_pad"] = save_model(dynamic_pad_model(), root / "dynamic_pad.onnx")
    (root / "notes.onnx").write_text("hello\n")
    paths["not_onnx"] = root / "notes.onnx"
    for name, source in PLUGINS.items():
        (root / name).write_text(source)
        paths[name] = root / name
    (root / "tuning").mkdir()
    for name in ("database_workload.json", "database_tuning_record.json"):
        (root / "tuning" / name).write_text("{{{ not json\n")
    paths["bad_tuning"] = root / "tuning"
    (root / "a_file").write_text("a file, not a directory\n")
    paths["a_file"] = root / "a_file"

    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(photos / "flat.png")
    paths["flat_photos"] = photos
    for name, write in {
        "fake_jpg": lambda d: (d / "photo.jpg").write_text("not a JPEG\n"),
        "tiny_photo": lambda d: Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "dot.png"),
        "photo": lambda d: Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            d / "noise.png"
        ),
    }.items():
        (root / name).mkdir()
        write(root / name)
        paths[name] = root / name
    return paths


# --- servers that are not RPC trackers, on this machine only -------------------------------------------


@pytest.fixture(scope="module")
def silent_server():
    """Accepts connections on 127.0.0.1 and never says a word (nor closes them)."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for connection in held:
        connection.close()


@pytest.fixture(scope="module")
def http_server():
    """Answers every connection with an HTTP line: a server, but no RPC tracker."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


# --- the table ---------------------------------------------------------------------------------------
# name -> (tool, its arguments, what the error line must name, the output: "absent", "dir" (an existing
# artefact-like directory), "under_file" or "none"). Arguments are callables of (files, out, ports).

Args = Callable[[dict, Path, dict], list]


def compile_args(model: str, *extra: str) -> Args:
    return lambda f, out, ports: ["compile", f[model], "--target", "llvm", *extra, "-o", out]


def run_args(artefact: str, *extra) -> Args:
    return lambda f, out, ports: ["run", f[artefact], *[f.get(item, item) for item in extra], "-o", out]


BAD = {
    # compile.py: files
    "missing model": (
        lambda f, out, p: ["compile", f["tiny"].parent / "absent.onnx", "--target", "llvm", "-o", out],
        "absent.onnx: no such file",
        "absent",
    ),
    "not onnx": (compile_args("not_onnx"), "not an ONNX model", "absent"),
    "unsupported op": (compile_args("det"), "unsupported op Det in node 'determinant'", "dir"),
    "op the importer cannot convert": (compile_args("dynamic_pad"), "node 'dynamic_pad' (Pad)", "absent"),
    "dangling value": (compile_args("dangling"), "'ghost'", "absent"),
    "missing external data": (compile_args("external"), "weights.bin", "absent"),
    # compile.py: flags
    "unknown target": (
        lambda f, out, p: ["compile", f["tiny"], "--target", "tpu", "-o", out],
        "unknown target 'tpu'",
        "absent",
    ),
    "unknown device tag": (
        lambda f, out, p: ["compile", f["tiny"], "--target", "arm_cpu", "--device", "arm/nope", "-o", out],
        "unknown device tag 'arm/nope'",
        "absent",
    ),
    "malformed cuda tag": (
        lambda f, out, p: ["compile", f["tiny"], "--target", "cuda", "--device", "sm_9x", "-o", out],
        "sm_9x",
        "absent",
    ),
    "unknown pass": (compile_args("tiny", "--passes", "default,nope"), "unknown pass 'nope'", "absent"),
    "sparsity 1.5": (compile_args("tiny", "--passes", "default,featreg", "--sparsity", "1.5"), "--sparsity", "absent"),
    "sparsity nan": (compile_args("tiny", "--passes", "default,featreg", "--sparsity", "nan"), "--sparsity", "absent"),
    "sparsity -0.5": (
        compile_args("tiny", "--passes", "default,featreg", "--sparsity", "-0.5"),
        "--sparsity",
        "absent",
    ),
    "sparsity 1.0": (compile_args("tiny", "--passes", "default,featreg", "--sparsity", "1.0"), "--sparsity", "absent"),
    "min-sparsity 7": (
        compile_args("tiny", "--passes", "default,featreg", "--min-sparsity", "7"),
        "--min-sparsity",
        "absent",
    ),
    "calibrate wrong names": (
        lambda f, out, p: [
            "compile",
            f["tiny"],
            "--target",
            "llvm",
            "--passes",
            "default,featreg",
            "--sparsity",
            "0.5",
            "--calibrate",
            f["calib_names"],
            "-o",
            out,
        ],
        "'image'",
        "absent",
    ),
    "calibrate wrong shapes": (
        lambda f, out, p: [
            "compile",
            f["tiny"],
            "--target",
            "llvm",
            "--passes",
            "default,featreg",
            "--sparsity",
            "0.5",
            "--calibrate",
            f["calib_shapes"],
            "-o",
            out,
        ],
        "calib_shapes.npz",
        "absent",
    ),
    "input-shape negative": (compile_args("tiny", "--input-shape", "input=1,3,-8,8"), "--input-shape", "absent"),
    "input-shape zero": (compile_args("tiny", "--input-shape", "input=1,3,0,32"), "--input-shape", "absent"),
    "input-shape channels": (compile_args("tiny", "--input-shape", "input=1,4,32,32"), "input", "absent"),
    "input-shape output size zero": (compile_args("no_gates", "--input-shape", "x=1,3,1,1"), "x=1,3,1,1", "absent"),
    "plugin raises on import": (
        lambda f, out, p: ["compile", f["tiny"], "--target", "llvm", "--plugin", f["raises.py"], "-o", out],
        "raises.py",
        "absent",
    ),
    "plugin syntax error": (
        lambda f, out, p: ["compile", f["tiny"], "--target", "llvm", "--plugin", f["syntax.py"], "-o", out],
        "syntax.py",
        "absent",
    ),
    "plugin pass raises": (
        lambda f, out, p: [
            "compile",
            f["tiny"],
            "--target",
            "llvm",
            "--plugin",
            f["pass_raises.py"],
            "--passes",
            "default,explode",
            "-o",
            out,
        ],
        "'explode'",
        "absent",
    ),
    "plugin pass breaks the graph": (
        lambda f, out, p: [
            "compile",
            f["tiny"],
            "--target",
            "llvm",
            "--plugin",
            f["pass_breaks.py"],
            "--passes",
            "default,vandal",
            "-o",
            out,
        ],
        "'vandal'",
        "absent",
    ),
    "corrupt tuning db": (
        lambda f, out, p: ["compile", f["tiny"], "--target", "llvm", "--tuning-db", f["bad_tuning"], "-o", out],
        "tuning",
        "absent",
    ),
    # compile.py: output paths
    "compile -o under a file": (compile_args("tiny"), "-o", "under_file"),
    "compile -o empty": (lambda f, out, p: ["compile", f["tiny"], "--target", "llvm", "-o", ""], "-o", "none"),
    "compile -o holds a model.so directory": (compile_args("tiny"), "model.so", "dir_with_so_dir"),
    "compile -o holds a stranger file": (compile_args("tiny"), "notes.txt", "dir_with_stranger"),
    # run.py
    "inputs absent": (run_args("build", "--inputs", "absent.npz"), "--inputs absent.npz: no such file", "absent"),
    "inputs extra array": (run_args("build", "--inputs", "extra"), "'bonus'", "absent"),
    "inputs int64": (run_args("build", "--inputs", "int64"), "int64", "absent"),
    "inputs complex": (run_args("build", "--inputs", "complex"), "complex64", "absent"),
    "inputs string": (run_args("build", "--inputs", "string"), "'input'", "absent"),
    "inputs npy": (run_args("build", "--inputs", "npy"), "plain.npy", "absent"),
    "corrupt report": (run_args("corrupt_report"), "report.json", "absent"),
    "report without a key": (run_args("report_without_inputs"), "report.json", "absent"),
    "model.so not a library": (run_args("so_not_a_library"), "model.so", "absent"),
    "arm artefact without --rpc": (run_args("arm_build"), "--rpc", "absent"),
    "rpc not a port": (run_args("build", "--rpc", "localhost:notaport"), "expected HOST:PORT:KEY", "absent"),
    "rpc port 99999": (run_args("build", "--rpc", "127.0.0.1:99999:arm64-qemu"), "99999", "absent"),
    "rpc nobody listens": (
        lambda f, out, p: ["run", f["arm_build"], "--rpc", f"127.0.0.1:{p['free']}:arm64-qemu", "-o", out],
        "does not answer",
        "absent",
    ),
    "rpc silent server": (
        lambda f, out, p: ["run", f["arm_build"], "--rpc", f"127.0.0.1:{p['silent']}:arm64-qemu", "-o", out],
        "seconds",
        "absent",
    ),
    "run -o under a file": (run_args("build"), "-o", "under_file"),
    "run -o empty": (lambda f, out, p: ["run", f["build"], "-o", ""], "-o", "none"),
    "run -o a directory": (run_args("build"), "-o", "dir"),
    # tune.py
    "tune -o under a file": (
        lambda f, out, p: ["tune", f["tiny"], "--target", "llvm", "--trials", "4", "-o", out],
        "-o",
        "under_file",
    ),
    "tune rpc nobody listens": (
        lambda f, out, p: [
            "tune",
            f["tiny"],
            "--target",
            "arm_cpu",
            "--trials",
            "4",
            "--rpc",
            f"127.0.0.1:{p['free']}:arm64-qemu",
            "-o",
            out,
        ],
        "does not answer",
        "absent",
    ),
    "tune rpc not a tracker": (
        lambda f, out, p: [
            "tune",
            f["tiny"],
            "--target",
            "arm_cpu",
            "--trials",
            "4",
            "--rpc",
            f"127.0.0.1:{p['http']}:arm64-qemu",
            "-o",
            out,
        ],
        "not an RPC tracker",
        "absent",
    ),
    # zoo.py
    "zoo -o a directory": (lambda f, out, p: ["zoo", "tiny", "-o", out], "-o", "dir"),
    "zoo -o under a file": (lambda f, out, p: ["zoo", "tiny", "-o", out], "-o", "under_file"),
    # eval_featreg.py
    "eval scale 0": (
        lambda f, out, p: ["eval_featreg", SR_MODEL, "--images", f["photo"], "--scale", "0"],
        "--scale",
        "none",
    ),
    "eval scale 3 on x2": (
        lambda f, out, p: ["eval_featreg", SR_MODEL, "--images", f["photo"], "--scale", "3"],
        "--scale",
        "none",
    ),
    "eval sigma 0": (
        lambda f, out, p: ["eval_featreg", SR_MODEL, "--images", f["photo"], "--sigma", "0"],
        "--sigma",
        "none",
    ),
    "eval sigma negative": (
        lambda f, out, p: ["eval_featreg", SR_MODEL, "--images", f["photo"], "--sigma", "-25"],
        "--sigma",
        "none",
    ),
    "eval not an image": (lambda f, out, p: ["eval_featreg", SR_MODEL, "--images", f["fake_jpg"]], "photo.jpg", "none"),
    "eval 1x1 photo": (lambda f, out, p: ["eval_featreg", SR_MODEL, "--images", f["tiny_photo"]], "dot.png", "none"),
}


def snapshot(path: Path):
    """What is at ``path``, byte for byte: None when absent, bytes for a file, a dict for a directory."""
    if path.is_symlink() or path.is_file():
        return path.read_bytes()
    if path.is_dir():
        return {child.name: snapshot(child) for child in path.iterdir()}
    return None


def output_path(kind: str, tmp_path: Path, files: dict) -> tuple[Path, Path]:
    """(the -o to give, the path to watch)."""
    if kind == "under_file":
        a_file = tmp_path / "a_file"
        a_file.write_text("mine\n")
        return a_file / "out", a_file
    out = tmp_path / "out"
    if kind == "dir":
        shutil.copytree(files["build"], out)
    elif kind == "dir_with_so_dir":
        out.mkdir()
        (out / "model.so").mkdir()
        (out / "model.so" / "keep.txt").write_text("mine\n")
    elif kind == "dir_with_stranger":
        shutil.copytree(files["build"], out)
        (out / "notes.txt").write_text("mine\n")
    return out, tmp_path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_leaves_the_output_alone(case, files, tmp_path, silent_server, http_server):
    make_args, culprit, kind = BAD[case]
    out, watched = output_path(kind, tmp_path, files)
    before = snapshot(watched)
    ports = {"free": free_port(), "silent": silent_server, "http": http_server}
    tool, *args = make_args(files, out, ports)
    result = run_tool(tool, *args, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(error_lines) == 1, result.stderr
    assert culprit in error_lines[0], error_lines[0]
    assert snapshot(watched) == before
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "a staging file was left behind"


# --- odd but valid: success, with a warning ---------------------------------------------------------


def test_nan_inputs_run_with_a_warning_and_check_says_they_disagree(files, tmp_path):
    result = run_tool("run", files["build"], "--inputs", files["nan"], "--check", "-o", tmp_path / "y.npz")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "NaN" in result.stderr and "'input'" in result.stderr
    assert "ONNX Runtime, output: nan" not in result.stdout and "Traceback" not in result.stderr
    assert "ONNX Runtime, output: the outputs disagree" in result.stdout
    assert (tmp_path / "y.npz").is_file()


def test_featreg_on_a_model_without_gates_succeeds_with_a_warning(files, tmp_path):
    result = run_tool(
        "compile", files["no_gates"], "--target", "llvm", "--passes", "default,featreg", "-o", tmp_path / "b"
    )
    assert result.returncode == 0, result.stderr
    assert "warning: featreg found no gate" in result.stderr
    assert (tmp_path / "b" / "model.so").is_file()


def test_a_flat_photo_gives_valid_json(files):
    result = run_tool("eval_featreg", SR_MODEL, "--images", files["flat_photos"])
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)  # json.loads accepts Infinity: check the text too
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout
    assert scores["model"]["psnr"] is None or np.isfinite(scores["model"]["psnr"])


def test_a_reused_artefact_directory_keeps_no_stale_file(files, tmp_path):
    """An llvm build into a directory that held a mali artefact: the old model.cl goes with the old artefact."""
    out = tmp_path / "out"
    shutil.copytree(files["build"], out)
    (out / "model.cl").write_text("__kernel void old() {}\n")
    result = run_tool("compile", files["tiny"], "--target", "llvm", "-o", out)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["model.onnx", "model.so", "report.json"]
    assert "model.cl" not in result.stdout
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_a_write_failing_midway_leaves_the_old_artefact(files, tmp_path):
    from types import SimpleNamespace

    from edgesparse.backends.artefact import write_artefact
    from edgesparse.backends.errors import BackendError
    from edgesparse.frontends import load_onnx

    out = tmp_path / "out"
    shutil.copytree(files["build"], out)
    before = snapshot(out)

    def export(path):
        Path(path).write_bytes(b"half a library")
        raise OSError(28, "No space left on device")

    build = SimpleNamespace(export=export, spec=SimpleNamespace(is_gpu=False))
    with pytest.raises(BackendError, match="No space left on device"):
        write_artefact(out, load_onnx(files["tiny"]), build, {})
    assert snapshot(out) == before
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory; -o under a file covers it")
def test_output_in_a_read_only_directory_is_one_error_line(files, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for tool, args in [
            ("compile", [files["tiny"], "--target", "llvm"]),
            ("run", [files["build"]]),
            ("zoo", ["tiny"]),
        ]:
            result = run_tool(tool, *args, "-o", locked / "out")
            assert result.returncode == 2 and result.stderr.startswith("error: -o "), result.stderr
            assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.rapidocr
def test_strip_channels_alone_on_the_masked_rapidocr_classifier(tmp_path):
    """--passes strip-channels without default runs the clean-up first; with the input's symbolic dims fixed
    it strips and compiles, without them it refuses in one line that says to fix them."""
    from edgesparse.frontends import load_onnx
    from edgesparse.frontends.third_party import rapidocr_classifier_path
    from edgesparse.passes import run_pipeline
    from edgesparse.passes.channel_masks import insert_masks, random_masks

    model = run_pipeline(load_onnx(rapidocr_classifier_path()), "lift-constants,fold-batchnorm")
    insert_masks(model, random_masks(model, 0.5, seed=0))
    masked = save_model(model, tmp_path / "masked.onnx")
    result = run_tool(
        "compile",
        masked,
        "--target",
        "llvm",
        "--passes",
        "strip-channels",
        "--input-shape",
        "x=1,3,48,192",
        "-o",
        tmp_path / "build",
    )
    assert result.returncode == 0, result.stderr
    macs = result.stdout.split("MACs ")[1].split(";")[0].replace(",", "").split(" -> ")
    assert int(macs[1]) < int(macs[0])
    refused = run_tool("compile", masked, "--target", "llvm", "--passes", "strip-channels", "-o", tmp_path / "b2")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--input-shape" in refused.stderr
    assert not (tmp_path / "b2").exists()
