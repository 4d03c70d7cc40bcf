"""How a pass puts findings into ``report.json``: a JSON entry in the model's metadata.

A pass calls ``record(model, "channels", [...])``; the entry travels with the model (it is visible in
``model.onnx`` too) and the backend copies every recorded entry into the report under its key.
"""

from __future__ import annotations

import json

import onnx_ir as ir

PREFIX = "edgesparse.report."


def record(model: ir.Model, key: str, value) -> None:
    model.metadata_props[PREFIX + key] = json.dumps(value)


def recorded_reports(model: ir.Model) -> dict[str, str]:
    """key -> JSON text of every entry recorded on ``model``."""
    return {name[len(PREFIX) :]: text for name, text in model.metadata_props.items() if name.startswith(PREFIX)}
