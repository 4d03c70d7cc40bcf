"""Which channels hold a known constant: the same value at every position, whatever the input (an analysis).

Pruned channels are such constants: 0 after a mask or an all-zero filter, the bias after a conv or a
BatchNormalization, then whatever the activations make of that. Constants flow forward in graph order,
through the ``constants`` rule of each node's handler (channel_ops.OP_HANDLERS):
- Conv / ConvTranspose / Gemm / MatMul: an output channel is constant when every input channel its
  weights read is constant. With padding (Conv) or overlapping kernels (ConvTranspose) only when those
  are all 0: a non-zero constant read through the zero border is not uniform.
- Mul: a channel multiplied by a known 0 is 0, whatever the other factor (activations are assumed
  finite).
- any other node with a coupling rule (channel_deps): when every input channel coupled to an output
  channel is known, the node is evaluated on constant inputs with ONNX's reference evaluator and the
  channel read back; it counts only if it came out uniform (a Pad or a padded pool can break that).
Nodes without a coupling rule are skipped: their channels are pinned, so their constants never matter.
The model is not changed.
"""

from __future__ import annotations

import onnx_ir as ir

from edgesparse.passes.channel_deps import ChannelGraph
from edgesparse.passes.channel_ops import Constants, op_handler


def channel_constants(model: ir.Model, deps: ChannelGraph) -> Constants:
    """Activation slot -> its constant value, for every channel of the main graph proven constant."""
    known: Constants = {}
    for node in model.graph:
        coupling = deps.couplings.get(node)
        if coupling is not None:
            known.update(op_handler(node).constants(node, coupling, known))
    return known
