"""Graph passes on onnx-ir models, a registry of named passes and the pipeline that runs them."""

from edgesparse.passes.errors import EdgesparseError, PassError
from edgesparse.passes.pipeline import DEFAULT_PASSES, build_pipeline, expand_pass_names, run_pipeline
from edgesparse.passes.registry import create_pass, load_plugin, register_pass, registered_passes

__all__ = [
    "DEFAULT_PASSES",
    "EdgesparseError",
    "PassError",
    "build_pipeline",
    "create_pass",
    "expand_pass_names",
    "load_plugin",
    "register_pass",
    "registered_passes",
    "run_pipeline",
]
