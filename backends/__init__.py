"""Backends: TVM builds for host / ARM CPU / Mali / CUDA targets, ONNX Runtime as the reference, RPC."""

from edgesparse.backends.artefact import Artefact
from edgesparse.backends.compiler import CompileResult, compile_model
from edgesparse.backends.targets import TARGET_NAMES, resolve_target

__all__ = ["TARGET_NAMES", "Artefact", "CompileResult", "compile_model", "resolve_target"]
