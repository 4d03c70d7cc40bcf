"""The clean-up passes every later pass relies on, registered by name.

All of them come from onnx-ir and onnxscript; this module only names and configures them:
- ``lift-constants``: Constant nodes (how many exporters store weights) become initializers, so that
  passes find weights in one place.
- ``fold-constants``: onnxscript's constant folding (shape computations, constant subgraphs, also those
  reading initializers listed as graph inputs: see :class:`FoldConstantsPass`).
- ``fold-batchnorm``: BatchNormalization folded into the Conv/ConvTranspose/Gemm before it (onnxscript's
  rules, whose check refuses weights shared with another node).
- ``remove-unused``: dead nodes, unused initializers, initializers listed as graph inputs, unused
  functions and opsets.
- ``shape-inference``: ONNX shape inference over the whole graph.
Each preserves the model's outputs (up to float rounding for the folds).
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import fold_constants_ir
from onnxscript.rewriter import RewritePass
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from edgesparse.passes.registry import register_pass

# The clean-up every later pass relies on, in order (the ``default`` of a pipeline).
CLEANUP_PASSES = ("lift-constants", "fold-constants", "fold-batchnorm", "remove-unused", "shape-inference")


@register_pass("shape-inference")
def shape_inference_pass() -> ir.passes.PassBase:
    return common.ShapeInferencePass()


@register_pass("lift-constants")
def lift_constants_pass() -> ir.passes.PassBase:
    # size_limit=0: scalars too, so that e.g. Mul-by-constant masks are initializers like any weight.
    return common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)


@register_pass("fold-constants")
class FoldConstantsPass(ir.passes.InPlacePass):
    """onnxscript's public constant folder, with ONNX shape inference on so shape subgraphs fold too.

    Initializers that are also graph inputs (what exporters write with ``keep_initializers_as_inputs``,
    e.g. many PyPI models) are first made plain initializers: onnxscript treats such a value as an input a
    caller may override, so it folds nothing that reads one, and a ``Pad``'s pads computed by
    ``Cast``/``Concat``/``Reshape`` from them would reach TVM's importer unfolded ("Dynamic pads are not
    supported"). A compiled model's weights are fixed, so they are not inputs here.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        made_constant = common.RemoveInitializersFromInputsPass()(model).modified
        folded = fold_constants_ir(model, onnx_shape_inference=True).modified
        return ir.passes.PassResult(model, made_constant or folded)


@register_pass("fold-batchnorm")
def fold_batchnorm_pass() -> ir.passes.PassBase:
    return RewritePass(
        [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule]
    )


@register_pass("remove-unused")
def remove_unused_pass() -> ir.passes.PassBase:
    return ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.RemoveInitializersFromInputsPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
    )
