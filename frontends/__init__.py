"""Frontends: where models come from, as onnx-ir models (shapes inferred).

Imported: ONNX files (``onnx_frontend``) and PyTorch modules (``torch_frontend``), the example nets
(``zoo``) and a real third-party CNN (``third_party``), and the calibration inputs a pass measures with
(``calibration``). Trained: the FeatReg and ADMP methods (``featreg``, ``admp``), each with its
experiments (data sets, runs, evaluation, plots) in an ``experiments`` subpackage that needs the
``train`` extra; nothing else here does.
"""

from edgesparse.frontends.onnx_frontend import load_onnx, set_input_shapes

__all__ = ["load_onnx", "set_input_shapes"]
