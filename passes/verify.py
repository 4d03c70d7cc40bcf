"""Debug mode: wrap every pass so that its result is checked before the next one runs.

After the wrapped pass: the ONNX checker (full check, with shape inference), and the model's outputs in
ONNX Runtime compared with those of the model before the pass on the same random inputs. A pass that
breaks either raises :class:`PassError` naming the pass. The wrapper itself preserves everything
the wrapped pass preserves and declares the same in-place behaviour. A pass that changes the outputs by
design has an ``expected_model(model)`` method returning the model its result must equal (e.g. the featreg
pass's model at the level's thresholds); its result is compared with that instead.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from edgesparse.passes.errors import PassError
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime

DEFAULT_RTOL = 1e-4


def graph_problem(graph: ir.Graph) -> str | None:
    """The first value that the graph reads but nothing defines (no node, input or initializer), or None:
    what a model file or a pass that lost a node leaves behind, and what every later step trips over."""
    defined = {id(value) for value in graph.inputs} | {id(value) for value in graph.initializers.values()}
    defined.update(id(value) for node in graph for value in node.outputs)
    for node in graph:
        for value in node.inputs:
            if value is not None and id(value) not in defined:
                return f"node {node.name!r} ({node.op_type}) reads {value.name!r}, which nothing produces"
    for value in graph.outputs:
        if id(value) not in defined:
            return f"graph output {value.name!r} is produced by no node"
    return None


def checker_problem(proto: onnx.ModelProto) -> str | None:
    """The first line of what the full ONNX checker (with strict shape inference) finds, or None."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return str(exc).strip().splitlines()[0]
    return None


class PassWrapper(ir.passes.PassBase):
    """A pass around a named pass, declaring the same in-place behaviour (the pipeline's wrappers)."""

    def __init__(self, inner: ir.passes.PassBase, name: str):
        self.inner = inner
        self.name = name

    @property
    def in_place(self) -> bool:
        return self.inner.in_place

    @property
    def changes_input(self) -> bool:
        return self.inner.changes_input


class VerifiedPass(PassWrapper):
    def __init__(self, inner: ir.passes.PassBase, name: str, *, rtol: float = DEFAULT_RTOL, seed: int = 0):
        super().__init__(inner, name)
        self.rtol = rtol
        self.seed = seed

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = ir.serde.serialize_model(model)
        inputs = random_inputs(model, self.seed)
        # A pass that changes the outputs by design (a sparsity level, masks given beside the model) says
        # what its result must compute instead.
        expected_model = getattr(self.inner, "expected_model", None)
        expected = run_onnxruntime(expected_model(model) if expected_model else before, inputs)
        result = self.inner(model)
        after = ir.serde.serialize_model(result.model)
        problem = checker_problem(after)
        # Blame the pass only for what it broke: some real models fail the full check (e.g. outputs
        # whose shapes were never recorded) before any pass runs.
        if problem and not checker_problem(before):
            raise PassError(f"pass {self.name!r} produced an invalid model: {problem}")
        actual = run_onnxruntime(after, inputs)
        for output_name, reference in expected.items():
            if output_name not in actual:
                raise PassError(f"pass {self.name!r} removed graph output {output_name!r}")
            error = max_relative_error(actual[output_name], reference)
            if error > self.rtol:
                raise PassError(
                    f"pass {self.name!r} changed output {output_name!r}: max relative error {error:.3g} > {self.rtol:g}"
                )
        return result
