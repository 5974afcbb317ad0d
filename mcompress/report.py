"""One `RunReport` per run, rendered as JSON, a terminal table, Markdown or HTML."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from mcompress import __version__

# Bump when a field changes meaning or is removed; adding fields keeps the version.
SCHEMA_VERSION = 2


@dataclass
class FileInfo:
    """A model file as it is on disk."""

    path: str
    size_bytes: int
    gzip_bytes: int
    parameters: int
    gzip_estimated: bool = False  # sampled, for large files (model_io.GZIP_EXACT_LIMIT)


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
    prepare: dict[str, Any] = field(default_factory=dict)
    passes: list[PassRecord] = field(default_factory=list)
    packing: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
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


def gzip_text(n: int | None, estimated: bool | None) -> str:
    """A gzip size, marked '~' when it was estimated from samples."""
    return ("~" if estimated and n is not None else "") + human_bytes(n)


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KB' (decimal units, as file browsers show)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def summary_table(report: RunReport) -> Table:
    """The terminal summary: sizes, ratio, passes with timings, validation and gates."""
    table = Table(title=f"mcompress {report.command}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("input", justify="right")
    table.add_column("output", justify="right")
    out = report.output
    table.add_row("file", Path(report.input.path).name, Path(out.path).name if out else "-")
    table.add_row(
        "size", human_bytes(report.input.size_bytes), human_bytes(out.size_bytes if out else None)
    )
    table.add_row(
        "gzip",
        gzip_text(report.input.gzip_bytes, report.input.gzip_estimated),
        gzip_text(out.gzip_bytes if out else None, out.gzip_estimated if out else None),
    )
    table.add_row(
        "parameters", f"{report.input.parameters:,}", f"{out.parameters:,}" if out else "-"
    )
    if report.compression_ratio:
        pct = 100 / report.compression_ratio
        table.add_row("ratio", "", f"{report.compression_ratio:.2f}x ({pct:.1f}% of input)")
    done = prepare_text(report.prepare)
    if done:
        # What every pass's preparation changed: the file can shrink with no pass changing it.
        table.add_row("prepare", "", done)
    for record in report.passes:
        changed = "" if record.modified else " (no change)"
        table.add_row(f"pass {record.type}", "", f"{record.seconds:.2f}s{changed}")
        for line in pass_lines(record):
            table.add_row(*line)
    for line in validation_lines(report.validation):
        table.add_row(*line)
    for gate in report.gates:
        status = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
        value = "-" if gate.value is None else f"{gate.value:.4g}"
        where = f" ({escape(gate.output)})" if gate.output else ""
        table.add_row(f"gate {gate.name}", f"{gate.threshold:g}", f"{value}{where} {status}")
    table.add_row("time", "", f"{report.seconds:.2f}s")
    return table


# Gates that make up the fidelity floor; failing one means the model is broken.
FLOOR_GATES = ("min_sqnr", "min_top1_agreement")


def verdict(report: RunReport) -> str:
    """One line: PASSED, FAILED: gate ..., or BROKEN: ... (a fidelity floor failed)."""
    failed = [g for g in report.gates if not g.passed]
    broken = [g for g in failed if g.name in FLOOR_GATES]
    others = [g for g in failed if g.name not in FLOOR_GATES]
    parts = []
    if broken:
        random = ((report.validation or {}).get("floor") or {}).get("inputs") == "random"
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
    relation = ">" if gate.name.startswith("max_") else "<"
    return f"gate {gate.name} {gate.value:.4g} {relation} {gate.threshold:g}"


_PREPARE_LABELS = {
    "constants_to_initializers": "Constant-node tensors moved to initializers",
    "identities_bypassed": "Identity readers bypassed",
    "batchnorms_folded": "BatchNorms folded",
    "unused_initializers_removed": "unused initializers removed",
}


def prepare_text(prepare: dict[str, Any]) -> str:
    """'35 BatchNorms folded, ...' for the non-zero counts of the preparation step."""
    return ", ".join(
        f"{prepare[key]} {label}" for key, label in _PREPARE_LABELS.items() if prepare.get(key)
    )


def validation_lines(validation: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """Rows (label, original, compressed) summarising validation for the terminal table."""
    if not validation:
        return []
    rows: list[tuple[str, str, str]] = []
    inputs = validation.get("inputs") or {}
    source = (
        "random (synthetic)" if inputs.get("synthetic") else Path(inputs.get("path", "data")).name
    )
    rows.append(("validated on", "", f"{validation.get('samples', 0)} samples, {source}"))
    guessed = inputs.get("guessed") or {}
    if guessed:
        sizes = ", ".join(f"{name} {'x'.join(map(str, dims))}" for name, dims in guessed.items())
        rows.append(("guessed sizes", "", f"{escape(sizes)} (pin with --input-shape)"))
    overall = validation.get("overall") or {}
    outputs = validation.get("outputs") or {}
    for key, label, fmt in (
        ("cosine", "cosine", "{:.6f}"),
        ("max_abs_error", "max abs error", "{:.4g}"),
        ("sqnr_db", "SQNR", "{:.1f} dB"),
        ("top1_agreement", "top-1 agreement", "{:.2%}"),
    ):
        value = overall.get(key)
        if value is not None:
            rows.append((label, "", fmt.format(value) + _worst_output(outputs, key, value)))
    bad = (overall.get("nan_count") or 0) + (overall.get("inf_count") or 0)
    if bad:
        rows.append(("NaN/inf values", "0", f"[red]{bad}[/red]"))
    task = validation.get("task")
    if task:
        before, after = task["original"]["accuracy"], task["compressed"]["accuracy"]
        rows.append(
            ("accuracy", f"{before:.2%}", f"{after:.2%} (drop {task['accuracy_drop']:+.2%})")
        )
    latency = validation.get("latency") or {}
    if latency.get("ratio"):
        ratio = latency["ratio"]
        if latency.get("slower"):
            confidence = latency.get("confidence_slower", 0.0)
            verdict = f" [red]SLOWER ({ratio:.2f}x, {confidence:.1%} confidence)[/red]"
        else:
            verdict = f" ({ratio:.2f}x)"
        rows.append(
            (
                "latency (median)",
                f"{latency['original']['median_ms']:.3f} ms",
                f"{latency['compressed']['median_ms']:.3f} ms{verdict}",
            )
        )
    memory = validation.get("memory") or {}
    if memory.get("original_peak_bytes"):
        rows.append(
            (
                "peak memory",
                human_bytes(memory["original_peak_bytes"]),
                human_bytes(memory["compressed_peak_bytes"]),
            )
        )
    return rows


def _worst_output(outputs: dict[str, Any], key: str, value: Any) -> str:
    """' (name)' of the output that gave the overall (worst) `value`, when there are several:
    a recurrent state and a probability drift very differently."""
    if len(outputs) < 2:
        return ""
    name = next((n for n, o in outputs.items() if o.get(key) == value), None)
    return f" ({name})" if name else ""


def pass_lines(record: PassRecord) -> list[tuple[str, str, str]]:
    """Rows of a pass's headline figures: worst quantized tensors, sparsity, clusters."""
    stats = record.stats
    rows: list[tuple[str, str, str]] = []
    for worst in stats.get("worst", [])[:3]:
        rows.append(("  worst SQNR", "", f"{worst['sqnr_db']:.1f} dB {escape(worst['name'])}"))
    totals = stats.get("totals") or {}
    if "sparsity" in totals:
        rows.append(("  sparsity", "", f"{totals['sparsity']:.1%} of pruned weights"))
    if record.type == "cluster" and stats.get("tensors"):
        rows.append(("  clustered", "", f"{len(stats['tensors'])} tensors, K={stats['clusters']}"))
    return rows


def inspect_tables(facts: dict[str, Any]) -> list[Table]:
    """Tables for `mcompress inspect`."""
    head = Table(title=Path(facts["path"]).name, show_header=False)
    head.add_column("")
    head.add_column("")
    opsets = ", ".join(f"{d} {v}" for d, v in facts["opsets"].items())
    for label, value in (
        ("IR version", str(facts["ir_version"])),
        ("opsets", opsets),
        ("producer", facts["producer"] or "-"),
        ("parameters", f"{facts['parameters']:,}"),
        ("size on disk", human_bytes(facts["size_bytes"])),
        ("gzip size", gzip_text(facts["gzip_bytes"], facts["gzip_estimated"])),
        ("external data", "yes" if facts["external_data"] else "no"),
        ("nodes", f"{facts['nodes']} ({facts['subgraphs']} subgraphs)"),
        ("weights in Constant nodes", str(facts["weights_in_constant_nodes"])),
    ):
        head.add_row(label, value)
    for io in ("inputs", "outputs"):
        for vi in facts[io]:
            shape = "x".join(str(d) for d in vi["shape"]) or "scalar"
            head.add_row(io[:-1], escape(f"{vi['name']}: {vi['dtype']} [{shape}]"))
    head.add_row(
        "bytes by dtype",
        ", ".join(f"{k} {human_bytes(v)}" for k, v in facts["bytes_by_dtype"].items()),
    )
    ops = Table(title="ops", show_header=True)
    for col in ("op", "count", "weight bytes"):
        ops.add_column(col, justify="left" if col == "op" else "right")
    for op, row in facts["ops"].items():
        ops.add_row(op, str(row["count"]), human_bytes(row["weight_bytes"]))
    largest = Table(title="largest weights", show_header=True)
    for col in ("name", "shape", "dtype", "bytes", "sparsity", "unique"):
        largest.add_column(col)
    for t in facts["largest_tensors"]:
        largest.add_row(
            t["name"],
            "x".join(map(str, t["shape"])),
            t["dtype"],
            human_bytes(t["bytes"]),
            f"{t['sparsity']:.1%}",
            str(t["unique_values"]),
        )
    return [head, ops, largest]
