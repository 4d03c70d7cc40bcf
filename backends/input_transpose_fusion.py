"""Relax pass: a transpose that only a conv2d reads goes into the conv's fused kernel.

ConvertLayout to NHWC leaves a ``permute_dims`` (NCHW -> NHWC) between the graph's NCHW input and the
first conv, and wherever the layout stops, as before a conv after a pixel shuffle. FuseOps keeps it a
kernel of its own: it fuses elementwise ops after a conv, never an injective op before one. As a kernel
of its own the transpose costs more than its work: one more parallel launch, and a buffer written by
one core's share of it that the conv's threads then read. Grouped with the conv (and with the bias add
and activations after it, which FuseOps would have fused with the conv anyway), FuseTIR makes one
PrimFunc of them, whose schedule reads the NCHW input directly (MetaSchedule's AutoInline inlines the
transpose into the conv's padding).

Preserves: the computation (the same ops, only grouped), and the fusions of every conv it does not
group. Refuses a transpose that another op reads too, which grouping would compute twice. Not
preserved: an elementwise op after the bias add that is not in ACTIVATIONS (a sigmoid, say) stays out
of the group and becomes a kernel of its own, where FuseOps would have fused it with the conv.
"""

from __future__ import annotations

import functools
import operator

import tvm
from tvm import relax
from tvm.relax.dpl.pattern import DFPattern, is_op, wildcard

PATTERN_NAME = "transposed_input_conv2d"


# The elementwise ops FuseOps puts after a first conv's bias add in the test nets, by their operand
# count besides the conv's: relu, and ReLU6 (a Clip, imported as maximum then minimum).
ACTIVATIONS = {"relax.nn.relu": 0, "relax.clip": 2, "relax.maximum": 1, "relax.minimum": 1}
MAX_ACTIVATIONS = 2


def _activation(operand: DFPattern) -> DFPattern:
    return functools.reduce(
        operator.or_, [is_op(op)(operand, *[wildcard()] * others) for op, others in ACTIVATIONS.items()]
    )


def _patterns() -> list[relax.transform.FusionPattern]:
    transposed = is_op("relax.permute_dims")(wildcard())
    roots = [is_op("relax.add")(is_op("relax.nn.conv2d")(transposed, wildcard()), wildcard())]
    for _ in range(MAX_ACTIVATIONS):
        roots.append(_activation(roots[-1]))
    # Longest first (FuseOpsByPattern takes the first that matches). No bare conv: grouped with the
    # transpose alone, it would lose the epilogue FuseOps gives it.
    return [
        relax.transform.FusionPattern(PATTERN_NAME, root, {"transposed": transposed}, _read_once_inside)
        for root in reversed(roots)
    ]


def _read_once_inside(context: relax.transform.PatternCheckContext) -> bool:
    """Every value of the group but its result is read by the next op of the group only: one read
    elsewhere too (the transpose by a second conv, say) would have the group compute it twice."""
    result = context.value_to_bound_var[context.matched_expr]
    return all(len(context.var_usages[var]) == 1 for var in context.matched_bindings if not var.same_as(result))


def fuse_input_transpose() -> tvm.transform.Pass:
    """Groups ``permute_dims -> conv2d -> add [-> up to two activations]`` into one function for FuseTIR."""
    return relax.transform.FuseOpsByPattern(_patterns(), bind_constants=False, annotate_codegen=False)
