"""Adding constant tensors to a graph as initializers, under names no other value uses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def fresh_name(graph: ir.Graph, hint: str) -> str:
    """``hint``, or ``hint_1``, ``hint_2``...: the first that names no value of ``graph``."""
    taken = {value.name for value in (*graph.inputs, *graph.initializers.values())}
    taken.update(output.name for node in graph for output in node.outputs)
    name, suffix = hint, 0
    while name in taken:
        suffix += 1
        name = f"{hint}_{suffix}"
    return name


def add_initializer(graph: ir.Graph, hint: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=fresh_name(graph, hint))
    value = ir.Value(
        name=tensor.name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value
