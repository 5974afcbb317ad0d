"""The terminal form of a report: the summary table of a run and the tables of `inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from mcompress.report import PassRecord, RunReport
from mcompress.validate import Validation

if TYPE_CHECKING:
    from mcompress.prepare import Prepared


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
        # One change per line: a long cell would widen the column and push every right-aligned
        # figure far from its label in a log.
        table.add_row("prepare", "", done.replace(", ", "\n"))
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


def prepare_text(prepared: Prepared | None) -> str:
    """'35 BatchNorms folded, ...' for the non-zero counts of the preparation step."""
    if prepared is None:
        return ""
    counts = (
        (prepared.constants_to_initializers, "Constant-node tensors moved to initializers"),
        (prepared.identities_bypassed, "Identity readers bypassed"),
        (prepared.batchnorms_folded, "BatchNorms folded"),
        (prepared.unused_initializers_removed, "unused initializers removed"),
    )
    return ", ".join(f"{count} {label}" for count, label in counts if count)


def validation_lines(validation: Validation | None) -> list[tuple[str, str, str]]:
    """Rows (label, original, compressed) summarising validation for the terminal table."""
    if not validation:
        return []
    rows: list[tuple[str, str, str]] = []
    inputs = validation.inputs
    source = (
        "random (synthetic)" if inputs.get("synthetic") else Path(inputs.get("path", "data")).name
    )
    rows.append(("validated on", "", f"{validation.samples} samples, {source}"))
    guessed = inputs.get("guessed") or {}
    if guessed:
        sizes = ", ".join(f"{name} {'x'.join(map(str, dims))}" for name, dims in guessed.items())
        rows.append(("guessed sizes", "", f"{escape(sizes)} (pin with --input-shape)"))
    overall, outputs = validation.overall, validation.outputs
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
    task = validation.task
    if task:
        before, after = task["original"]["accuracy"], task["compressed"]["accuracy"]
        rows.append(
            ("accuracy", f"{before:.2%}", f"{after:.2%} (drop {task['accuracy_drop']:+.2%})")
        )
    latency = validation.latency or {}
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
    memory = validation.memory or {}
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
