"""How a pass puts findings into ``report.json``: typed entries in the model's metadata.

A pass records an entry (``record(model, GatedLayers(...))``, or ``record(model, Note("key", value))``); the
entry travels with the model as JSON (visible in ``model.onnx`` too), the backend copies every recorded entry
into the report under its key, and a reader gets it back typed (``read(model, GatedLayers)``). The classes
below are the schema that writers and readers share, so no reader depends on a pass's dictionary keys.
"""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar, Protocol, TypeVar

import onnx_ir as ir

PREFIX = "edgesparse.report."


class ReportEntry(Protocol):
    """An entry of the report: its key in ``report.json`` and its JSON form."""

    KEY: ClassVar[str]

    def to_json(self): ...

    @classmethod
    def from_json(cls, data): ...


Entry = TypeVar("Entry", bound=ReportEntry)


@dataclasses.dataclass(frozen=True)
class GatedLayer:
    """One conv that reads a FeatReg gate: rewritten to GatedConv (``op``) or kept dense, and why."""

    name: str
    op: str
    gate: str
    threshold: float
    # Fraction of the gated input that is zero on the calibration samples; None without samples.
    input_sparsity: float | None
    dense_macs: int
    effective_macs: int
    kept_dense_because: str | None = None

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        if self.kept_dense_because is None:
            del data["kept_dense_because"]
        return data


@dataclasses.dataclass(frozen=True)
class GatedLayers:
    """The ``featreg`` pass's per-conv findings, in graph order (report key ``layers``)."""

    KEY: ClassVar[str] = "layers"
    layers: tuple[GatedLayer, ...]

    def to_json(self) -> list[dict]:
        return [layer.to_json() for layer in self.layers]

    @classmethod
    def from_json(cls, data: list[dict]) -> GatedLayers:
        return cls(tuple(GatedLayer(**layer) for layer in data))

    def effective_macs(self, macs_after: int) -> int | None:
        """The model's MACs with each gated layer at its effective count (None unless every layer was measured)."""
        if not self.layers or any(layer.input_sparsity is None for layer in self.layers):
            return None
        return (
            macs_after
            - sum(layer.dense_macs for layer in self.layers)
            + sum(layer.effective_macs for layer in self.layers)
        )

    def measured_sparsities(self, op: str | None = None) -> list[float]:
        """The measured input sparsities (of the layers rewritten to ``op`` only, when given)."""
        return [
            layer.input_sparsity
            for layer in self.layers
            if layer.input_sparsity is not None and (op is None or layer.op == op)
        ]


@dataclasses.dataclass(frozen=True)
class FeatRegSummary:
    """How the ``featreg`` pass was run (report key ``featreg``)."""

    KEY: ClassVar[str] = "featreg"
    sparsity_level: float | None
    calibration_samples: int
    min_sparsity: float
    # Convs that read a gate, and how many of them became GatedConv.
    gated_convs: int
    rewritten: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FeatRegSummary:
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class StrippedChannels:
    """The ``strip-channels`` pass's findings (report key ``strip_channels``): per conv-like node its input and
    output channel counts before and after (``layers``), and the masked channels kept, with the reason."""

    KEY: ClassVar[str] = "strip_channels"
    layers: list[dict]
    kept: list[dict]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StrippedChannels:
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Note:
    """A free-form entry, for a user's pass that needs no schema: any JSON value under its own key."""

    KEY: str
    value: object

    def to_json(self):
        return self.value


def record(model: ir.Model, entry: ReportEntry) -> None:
    model.metadata_props[PREFIX + entry.KEY] = json.dumps(entry.to_json())


def read(model: ir.Model, entry_type: type[Entry]) -> Entry | None:
    """The entry of that type recorded on ``model``, or None."""
    text = model.metadata_props.get(PREFIX + entry_type.KEY)
    return entry_type.from_json(json.loads(text)) if text is not None else None


def recorded_reports(model: ir.Model) -> dict:
    """key -> JSON value of every entry recorded on ``model`` (what ``report.json`` holds beside its own keys)."""
    return {
        name[len(PREFIX) :]: json.loads(text) for name, text in model.metadata_props.items() if name.startswith(PREFIX)
    }
