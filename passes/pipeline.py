"""A pipeline is a list of registered pass names run by onnx-ir's PassManager.

``"default"`` in a list of names stands for :data:`DEFAULT_PASSES`, so ``--passes default,my-pass``
runs the clean-up and then a user's pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from edgesparse.passes import cleanup, featreg, strip_channels  # noqa: F401  (the built-in passes register on import)
from edgesparse.passes.cleanup import CLEANUP_PASSES
from edgesparse.passes.errors import EdgesparseError, PassError
from edgesparse.passes.registry import create_pass, required_passes
from edgesparse.passes.verify import PassWrapper, VerifiedPass, graph_problem

DEFAULT_PASSES = CLEANUP_PASSES


def expand_pass_names(names: Sequence[str] | str) -> list[str]:
    """Splits a comma list, expands ``default``, and puts before each pass the passes it requires that the
    list does not run earlier (``--passes strip-channels`` runs the clean-up first, as TVM's pipelines
    run a pass's prerequisites)."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    expanded: list[str] = []
    for name in names:
        for step in DEFAULT_PASSES if name == "default" else [name]:
            expanded.extend(required for required in required_passes(step) if required not in expanded)
            expanded.append(step)
    return expanded


def symbolic_input_hint(model: ir.Model) -> str:
    """A failed pass's likeliest cause on a model with symbolic input dims, said with the fix."""
    symbolic = [
        f"{value.name}=" + ",".join(str(dim) if isinstance(dim, int) and dim > 0 else "?" for dim in value.shape or [])
        for value in model.graph.inputs
        if value.shape is None or not all(isinstance(dim, int) and dim > 0 for dim in value.shape)
    ]
    if not symbolic:
        return ""
    return f" (inputs with symbolic dims: {', '.join(symbolic)}; fix them with --input-shape NAME=D0,D1,...)"


class GuardedPass(PassWrapper):
    """Names the pass when it fails: an exception that is no :class:`EdgesparseError` (a plugin's bug) becomes
    a :class:`PassError` naming the pass, and so does a graph it left reading a value nothing produces."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            result = self.inner(model)
        except EdgesparseError:
            raise
        except Exception as exc:  # noqa: BLE001  (a pass's bug, said with the pass's name)
            cause = exc
            while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
                cause = cause.__cause__  # onnx-ir's wrapper around what the pass itself raised
            if isinstance(cause, EdgesparseError):
                raise cause from None
            message = (str(cause).strip().splitlines() or [""])[0]
            raise PassError(
                f"pass {self.name!r} failed: {type(cause).__name__}: {message}{symbolic_input_hint(model)}"
            ) from exc
        if (problem := graph_problem(result.model.graph)) is not None:
            raise PassError(f"pass {self.name!r} broke the graph: {problem}")
        return result


def build_pipeline(
    names: Sequence[str] | str = DEFAULT_PASSES,
    *,
    debug: bool = False,
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> ir.passes.PassManager:
    """One PassManager step over the named passes; in debug mode each is wrapped in :class:`VerifiedPass`.

    ``pass_options`` maps a pass name to the keyword arguments of its factory (e.g. a mask file).
    """
    pass_options = pass_options or {}
    passes = []
    for name in expand_pass_names(names):
        pass_ = create_pass(name, **pass_options.get(name, {}))
        passes.append(GuardedPass(VerifiedPass(pass_, name) if debug else pass_, name))
    if not passes:
        raise PassError("the pass list is empty")
    return ir.passes.PassManager(passes, steps=1)


def run_pipeline(
    model: ir.Model,
    names: Sequence[str] | str = DEFAULT_PASSES,
    *,
    debug: bool = False,
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> ir.Model:
    """Runs the pipeline; an :class:`EdgesparseError` raised inside a pass comes out as itself."""
    try:
        return build_pipeline(names, debug=debug, pass_options=pass_options)(model).model
    except ir.passes.PassError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, EdgesparseError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
