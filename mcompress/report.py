"""The report schema: one `RunReport` per run, written as JSON; each section's type is declared
next to the code that fills it. Rendering: render_terminal.py, render.py."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcompress import __version__

if TYPE_CHECKING:  # validate.py fills the section and imports this module's Gate
    from mcompress.encoding import Packing
    from mcompress.prepare import Prepared
    from mcompress.validate import Validation

# Bump when a field changes meaning or is removed; adding fields keeps the version.
SCHEMA_VERSION = 2


@dataclass
class FileInfo:
    """A model file as it is on disk."""

    path: str
    size_bytes: int
    gzip_bytes: int
    parameters: int
    gzip_estimated: bool = False  # sampled, for large files (gzipped.GZIP_EXACT_LIMIT)


@dataclass
class PassRecord:
    """What one pass did and how long it took."""

    type: str
    seconds: float
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Gate:
    """One quality gate and its outcome."""

    name: str
    threshold: float
    value: float | None
    passed: bool
    output: str | None = None  # the output a fidelity-floor gate was judged on (its worst)


@dataclass
class RunReport:
    """Everything a run did, measured; the JSON schema documented in the README."""

    command: str
    input: FileInfo
    output: FileInfo | None = None
    compression_ratio: float | None = None
    prepare: Prepared | None = None  # None: no preparation ran (JSON `{}`)
    passes: list[PassRecord] = field(default_factory=list)
    packing: Packing | None = None  # None: nothing was saved (JSON `{}`)
    validation: Validation | None = None
    search: dict[str, Any] | None = None  # budget search: trials and the size-fidelity front
    gates: list[Gate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION
    mcompress_version: str = __version__

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prepare"] = data["prepare"] or {}
        data["packing"] = self.packing.to_json() if self.packing else {}
        data["passed"] = self.passed
        return finite(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_jsonable, allow_nan=False)


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return finite(value.item())
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# Gates that make up the fidelity floor; failing one means the model is broken.
FLOOR_GATES = ("min_sqnr", "min_top1_agreement", "min_map_iou")


def verdict(report: RunReport) -> str:
    """One line: PASSED, FAILED: gate ..., or BROKEN: ... (a fidelity floor failed)."""
    failed = [g for g in report.gates if not g.passed]
    broken = [g for g in failed if g.name in FLOOR_GATES]
    others = [g for g in failed if g.name not in FLOOR_GATES]
    parts = []
    if broken:
        floor = report.validation.floor if report.validation else None
        random = (floor or {}).get("inputs") == "random"
        judged = " on random inputs" if random else ""
        parts.append("BROKEN: " + "; ".join(_gate_text(g) for g in broken) + judged)
    if others:
        parts.append("FAILED: " + "; ".join(_gate_text(g) for g in others))
    if parts:
        return "; ".join(parts)
    if report.validation is None:
        return "PASSED (not validated)"
    if not report.gates and any("--no-gates" in n for n in report.notes):
        return "PASSED (--no-gates: nothing judged)"
    return "PASSED"


def _gate_text(gate: Gate) -> str:
    """'output 'y' SQNR -4.3 dB < 1 dB' or 'gate max_accuracy_drop 0.05 > 0.01'."""
    if gate.value is None:
        return f"gate {gate.name} not measured"
    if gate.name == "min_sqnr":
        sqnr = round(gate.value, 1) + 0.0  # no "-0.0"
        return f"output '{gate.output}' SQNR {sqnr:.1f} dB < floor {gate.threshold:g} dB"
    if gate.name == "min_top1_agreement" and gate.output:
        return (
            f"output '{gate.output}' top-1 agreement {gate.value:.1%} < floor {gate.threshold:.0%}"
        )
    if gate.name == "min_map_iou" and gate.output:
        return f"output '{gate.output}' decision IoU {gate.value:.1%} < floor {gate.threshold:.0%}"
    relation = ">" if gate.name.startswith("max_") else "<"
    return f"gate {gate.name} {gate.value:.4g} {relation} {gate.threshold:g}"
