"""Pre-flight checks before a long run: what would fail, surprise or be left on the table.

Each check returns `Finding`s (severity note | warning | problem, message, fix). A problem
means the chosen config would fail on this model (exit 2); warnings and notes never fail.
Without a config, pass-specific checks are phrased for every pass and stay below "problem".
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper

from mcompress import inputs, model_io, runtime
from mcompress.analysis import constant_node_weights, tensor_sites
from mcompress.config import PipelineConfig
from mcompress.errors import McompressError
from mcompress.graph import names_used
from mcompress.passes import PASSES
from mcompress.passes.fp16.ops import FP16_CPU_KERNELS
from mcompress.render_terminal import human_bytes
from mcompress.runtime import error_line

Severity = Literal["note", "warning", "problem"]
SEVERITIES: tuple[Severity, ...] = ("problem", "warning", "note")

FLOAT16_MAX = 65504.0
# Magnitudes below half the smallest float16 subnormal (2**-24) round to zero in float16.
FLOAT16_ZERO = 2.0**-25
PER_CHANNEL_MIN_OPSET = 13
TWO_GB = 2**31
# Tensors smaller than this are ignored by the duplicate check (shape constants, scalars).
MIN_DUPLICATE_ELEMENTS = 16
# At most this many samples of --data are run for the activation range check.
ACTIVATION_SAMPLES = 8
# Models above this size are not loaded into memory for the activation check.
ACTIVATION_MAX_BYTES = 1_500_000_000

# Ops whose weights onnxruntime's CPU provider can compute with in int8 (MatMulInteger,
# ConvInteger/QLinearConv, DynamicQuantizeLSTM, QAttention; Gather reads int8 tables).
# Weights of other ops are at best stored in int8 and dequantized to float at load.
INTEGER_CPU = frozenset({"Conv", "MatMul", "Gemm", "Gather", "LSTM", "Attention"})
# Weights in ops without an integer kernel are reported from this share of all weight bytes.
INTEGER_REPORT_SHARE = 0.1
# Ops that carry no arithmetic worth a kernel check (data movement, shapes, control flow).
_NO_COMPUTE = frozenset({"Constant", "If", "Loop", "Scan", "Identity", "Shape", "Size"})


@dataclass(frozen=True)
class Finding:
    """One pre-flight finding: how bad it is, what was found, and what to do about it."""

    severity: Severity
    check: str
    message: str
    fix: str


@dataclass
class _Context:
    """What the checks share: the model, the chosen config and data."""

    path: Path
    model: model_io.Model
    cfg: PipelineConfig | None
    data: Path | None
    input_shapes: dict[str, tuple[int, ...]]

    def uses(self, pass_type: str) -> bool:
        """Whether the chosen config runs `pass_type` (always true without a config)."""
        return self.cfg is None or any(p.type == pass_type for p in self.cfg.passes)

    def pass_configs(self, pass_type: str) -> list[Any]:
        if self.cfg is None:
            return []
        return [p for p in self.cfg.passes if p.type == pass_type]


def diagnose(
    path: Path,
    *,
    cfg: PipelineConfig | None = None,
    data: Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[Finding]:
    """Run every check on the model at `path`; findings sorted problem -> warning -> note."""
    try:
        model = model_io.load_model(path)
    except McompressError as exc:
        return [
            Finding(
                "problem",
                "load",
                exc.message,
                exc.hint or "re-export or re-download the model; keep its .data files beside it",
            )
        ]
    if data is None and cfg is not None and cfg.validation.data:
        data = Path(cfg.validation.data)
    shapes = dict(input_shapes or {})
    if cfg is not None:
        shapes = {**{k: tuple(v) for k, v in cfg.validation.input_shapes.items()}, **shapes}
    ctx = _Context(path, model, cfg, data, shapes)
    findings: list[Finding] = []
    for check in _CHECKS:
        findings.extend(check(ctx))
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def exit_code(findings: list[Finding]) -> int:
    """2 when any finding is a problem, else 0."""
    return 2 if any(f.severity == "problem" for f in findings) else 0


def to_dict(findings: list[Finding], path: Path, config_name: str | None) -> dict[str, Any]:
    """The `doctor --json` document."""
    counts = Counter(f.severity for f in findings)
    return {
        "model": str(path),
        "config": config_name,
        "findings": [asdict(f) for f in findings],
        "counts": {s: counts.get(s, 0) for s in SEVERITIES},
        "exit_code": exit_code(findings),
    }


# ---------------------------------------------------------------- file and runtime


def _check_size(ctx: _Context) -> Iterator[Finding]:
    size = model_io.disk_size(ctx.path)
    files = model_io.data_files(ctx.path)
    if size > TWO_GB:
        yield Finding(
            "warning",
            "size",
            f"the model is {human_bytes(size)}, over the 2 GB protobuf limit: outputs are "
            "written with external data (OUT.onnx plus OUT.onnx.data)",
            "keep each output .onnx and its .data file together when copying or uploading",
        )
    if len(files) > 1:
        yield Finding(
            "note",
            "external-data",
            f"weights are spread over {len(files)} external data files; outputs use one",
            "nothing to do",
        )
    elif files and size <= TWO_GB:
        yield Finding(
            "note",
            "external-data",
            f"weights live in the external file '{files[0].name}'; outputs keep external data",
            "keep the output's .data file next to it",
        )


def _check_runtime(ctx: _Context) -> Iterator[Finding]:
    proto = ctx.model.proto
    opset = ctx.model.opset("")
    if opset > model_io.max_opset():
        yield Finding(
            "problem",
            "opset",
            f"opset {opset} is newer than the installed onnxruntime supports "
            f"({model_io.max_opset()}); no output can be written",
            "upgrade onnxruntime (pip install -U onnxruntime)",
        )
        return
    if proto.ir_version > model_io.max_ir_version():
        yield Finding(
            "note",
            "ir-version",
            f"IR version {proto.ir_version} is newer than onnxruntime loads; outputs are "
            f"written with IR version {model_io.max_ir_version()}",
            "nothing to do",
        )
    validating = ctx.cfg is None or (ctx.cfg.validation.enabled and bool(ctx.cfg.passes))
    if validating:
        error = _session_error(ctx.path)
        if error:
            yield Finding(
                "problem",
                "onnxruntime",
                f"onnxruntime cannot load the original model: {error}",
                "validation runs the original; fix the export, or pass --no-validate",
            )


def _session_error(path: Path) -> str | None:
    try:
        runtime.session(path)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one finding
        return error_line(exc, 200)
    return None


def _check_config(ctx: _Context) -> Iterator[Finding]:
    """Each pass's own `check` on this model: exactly what would stop the run."""
    if ctx.cfg is None:
        return
    for pass_cfg in ctx.cfg.passes:
        try:
            PASSES[pass_cfg.type].check(ctx.model, pass_cfg)
        except McompressError as exc:
            yield Finding(
                "problem",
                f"pass-{pass_cfg.type}",
                f"pass '{pass_cfg.type}' cannot run on this model: {exc.message}",
                exc.hint or f"change or remove the '{pass_cfg.type}' pass in the config",
            )


# ---------------------------------------------------------------- inputs and data


def _check_inputs(ctx: _Context) -> Iterator[Finding]:
    """Data that does not fit the model fails validation; unpinned dynamic dims are guessed."""
    if ctx.cfg is not None and not ctx.cfg.validation.enabled and not ctx.data:
        return
    if ctx.data is not None:
        try:
            made = inputs.make_feeds(
                ctx.path, data=ctx.data, samples=1, seed=0, input_shapes=ctx.input_shapes
            )
        except McompressError as exc:
            yield Finding(
                "problem",
                "data",
                exc.message,
                exc.hint or "pass an .npz keyed by input names, first axis = samples",
            )
            return
        for note in made.description.get("notes", []):
            yield Finding("note", "data", note, "nothing to do: only model inputs are read")
        return
    from mcompress.inputs import facts, shapes

    model_inputs = facts.graph_inputs(ctx.model.proto)
    resolved, guessed, _ = shapes.resolve(ctx.model, model_inputs, ctx.input_shapes)
    for inp in model_inputs:
        loose = guessed.get(inp.name)
        if not loose:
            continue
        where = ", ".join(f"{i} ('{inp.dims[i] or '?'}')" for i in loose)
        example = "x".join(
            _placeholder(i, inp.dims[i]) if i in loose else str(size)
            for i, size in enumerate(resolved[inp.name])
        )
        yield Finding(
            "warning",
            "dynamic-dims",
            f"input '{inp.name}' has dynamic dimension(s) {where} that neither data nor the "
            "model pins; random validation and calibration guess their size",
            f"pass --data FILE with real inputs, or --input-shape {inp.name}={example} "
            "with the sizes you deploy with",
        )


def _placeholder(index: int, dim: int | str | None) -> str:
    name = dim if isinstance(dim, str) and dim.isidentifier() else f"d{index}"
    return f"<{name}>"


def _check_activations(ctx: _Context) -> Iterator[Finding]:
    """With data: run the model once with intermediates exposed; find float16 overflows."""
    if ctx.data is None or not ctx.uses("fp16"):
        return
    try:
        feeds = inputs.make_feeds(
            ctx.path,
            data=ctx.data,
            samples=ACTIVATION_SAMPLES,
            seed=0,
            input_shapes=ctx.input_shapes,
        ).feeds
    except McompressError:
        return  # reported by the input check
    if model_io.disk_size(ctx.path) > ACTIVATION_MAX_BYTES:
        yield Finding(
            "note",
            "activations",
            "activation ranges not checked: the model is too large to copy in memory",
            "use fp16 with auto: true, which checks activations while converting",
        )
        return
    peaks, producers, error = _activation_peaks(ctx.model, feeds)
    if error:
        yield Finding(
            "note",
            "activations",
            f"activation ranges not checked: onnxruntime could not run the model ({error})",
            "check the data with mcompress validate MODEL MODEL --data FILE",
        )
        return
    over = sorted(
        ((name, peak) for name, peak in peaks.items() if peak > FLOAT16_MAX),
        key=lambda item: -item[1],
    )
    if not over:
        return
    auto = any(getattr(p, "auto", False) for p in ctx.pass_configs("fp16"))
    listed = ", ".join(
        f"'{producers.get(n, n)}' ({'inf/nan' if not np.isfinite(p) else f'{p:.3g}'})"
        for n, p in over[:5]
    )
    more = f" and {len(over) - 5} more" if len(over) > 5 else ""
    yield Finding(
        "note" if auto else "warning",
        "activations",
        f"{len(over)} activation(s) exceed the float16 range on this data: {listed}{more}",
        "fp16 auto: true keeps these nodes in float32"
        if auto
        else "use {type: fp16, auto: true} (or block these nodes), or stay in float32/int8",
    )


def _activation_peaks(
    model: model_io.Model, feeds: list[dict[str, np.ndarray]]
) -> tuple[dict[str, float], dict[str, str], str | None]:
    """Max |value| of every float intermediate of the main graph over `feeds`."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    existing = {o.name for o in proto.graph.output}
    producers: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            producers[out] = node.name or f"{node.op_type}:{out}"
            if out and out not in existing:
                proto.graph.output.append(onnx.ValueInfoProto(name=out))
                existing.add(out)
    try:
        session = runtime.session(proto, optimize=False, external_folder=model.base_dir)
        names = [o.name for o in session.get_outputs()]
        peaks: dict[str, float] = {}
        for feed in feeds:
            for name, value in zip(names, session.run(names, feed), strict=True):
                array = np.asarray(value)
                if array.dtype.kind != "f" or not array.size:
                    continue
                finite = np.isfinite(array).all()
                peak = float(np.abs(array).max()) if finite else float("inf")
                peaks[name] = max(peaks.get(name, 0.0), peak)
    except Exception as exc:  # noqa: BLE001 - any failure means: not checked, say why
        return {}, producers, error_line(exc, 200)
    return peaks, producers, None


# ---------------------------------------------------------------- passes vs. the model


def _check_opset(ctx: _Context) -> Iterator[Finding]:
    """Static per-channel QDQ needs opset 13: older models are converted first."""
    opset = ctx.model.opset("")
    if opset >= PER_CHANNEL_MIN_OPSET or not ctx.uses("quantize"):
        return
    converting = [
        p
        for p in ctx.pass_configs("quantize")
        if getattr(p, "mode", "") == "static"
        and getattr(p, "per_channel", False)
        and getattr(p, "format", "qdq") == "qdq"
    ]
    if ctx.cfg is not None and not converting:
        return
    message = (
        f"opset {opset} is older than {PER_CHANNEL_MIN_OPSET}, which per-channel static "
        "quantization (QDQ DequantizeLinear with an axis) needs"
    )
    if converting and model_io.max_opset() < PER_CHANNEL_MIN_OPSET:
        yield Finding(
            "problem",
            "opset",
            message + f"; the installed onnxruntime supports only up to {model_io.max_opset()}",
            "set per_channel: false, or upgrade onnxruntime",
        )
        return
    yield Finding(
        "warning" if converting else "note",
        "opset",
        message + f": mode: static converts the model to opset {PER_CHANNEL_MIN_OPSET} first "
        "(reported as opset_upgrade); dynamic and weight-only keep it",
        f"set per_channel: false to keep opset {opset} with static quantization",
    )


def _check_kernels(ctx: _Context) -> Iterator[Finding]:
    """Ops that will not get integer or float16 kernels on CPU after the chosen passes."""
    weight_bytes = _weight_bytes_by_name(ctx.model)
    total = sum(weight_bytes.values()) or 1
    types = _value_types(ctx.model.proto)
    prepared = ctx.cfg is None or ctx.cfg.prepare
    float_ops: Counter[str] = Counter()
    no_integer: Counter[str] = Counter()
    no_integer_bytes = 0
    for graph in ctx.model.graphs():
        for node in graph.node:
            if node.op_type in _NO_COMPUTE or node.domain not in ("", "ai.onnx"):
                continue
            held = sum(weight_bytes.get(i, 0) for i in node.input[1:])
            folded = node.op_type == "BatchNormalization" and prepared
            if held and node.op_type not in INTEGER_CPU and not folded:
                no_integer[node.op_type] += 1
                no_integer_bytes += held
            computes_float = types.get(node.output[0], onnx.TensorProto.FLOAT) in _FLOAT32
            native = FP16_CPU_KERNELS.get(node.op_type, 10**6) <= ctx.model.opset("")
            if not native and computes_float and not folded:
                float_ops[node.op_type] += 1
    share = no_integer_bytes / total
    if ctx.uses("quantize") and share >= INTEGER_REPORT_SHARE:
        yield Finding(
            "warning" if ctx.cfg is not None and share > 0.5 else "note",
            "int8-kernels",
            f"int8: {_ops_text(no_integer)} hold {human_bytes(no_integer_bytes)} "
            f"({share:.0%} of the weights) and have no integer CPU kernel in onnxruntime: "
            "their weights stay float or are dequantized at load, so they get no faster",
            "expected for these ops; for size, add prune/cluster passes for them",
        )
    if ctx.uses("fp16") and float_ops:
        count = sum(float_ops.values())
        yield Finding(
            "warning" if ctx.cfg is not None else "note",
            "fp16-kernels",
            f"fp16: {count} compute node(s) ({_ops_text(float_ops)}) have no float16 CPU "
            "kernel in onnxruntime (table in mcompress/passes/fp16/ops.py): they compute in "
            "float32 from float16 weights, so the file halves but CPU inference gets no faster",
            "use fp16 for size or for GPU deployment; for CPU speed prefer int8 (level1)",
        )


_FLOAT32 = {onnx.TensorProto.FLOAT, onnx.TensorProto.UNDEFINED}


def _value_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value shape inference can type (weights are not needed)."""
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    for tensor in graph.initializer:
        if model_io.is_external(tensor):
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
    stripped = helper.make_model(graph, opset_imports=proto.opset_import)
    stripped.ir_version = proto.ir_version
    try:
        inferred = onnx.shape_inference.infer_shapes(stripped)
    except Exception:  # noqa: BLE001 - without types every node counts as float
        return {}
    return {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
        if vi.type.HasField("tensor_type")
    }


def _ops_text(ops: Counter[str]) -> str:
    top = ", ".join(f"{op} x{n}" for op, n in ops.most_common(6))
    return top + (f" and {len(ops) - 6} more op types" if len(ops) > 6 else "")


def _weight_bytes_by_name(model: model_io.Model) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for site in tensor_sites(model.proto):
        if site.tensor.data_type in model_io.FLOAT_TYPES:
            sizes[site.name] = _nbytes(site.tensor)
    return sizes


def _nbytes(tensor: onnx.TensorProto) -> int:
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return itemsize * int(np.prod(tensor.dims, dtype=np.int64))


# ---------------------------------------------------------------- weights


def _float_sites(ctx: _Context) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(name, values, in Constant node) of every float32/float64 weight, wherever stored."""
    for site in tensor_sites(ctx.model.proto):
        if site.tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            yield site.name, model_io.read_array(site.tensor, ctx.model.base_dir), site.in_constant


def _check_weight_range(ctx: _Context) -> Iterator[Finding]:
    if not ctx.uses("fp16"):
        return
    big: list[tuple[str, int, float]] = []
    nonfinite: list[str] = []
    tiny = 0
    for name, values, _ in _float_sites(ctx):
        if not values.size:
            continue
        magnitude = np.abs(values)
        if not np.isfinite(magnitude).all():
            nonfinite.append(name)
            magnitude = np.where(np.isfinite(magnitude), magnitude, 0)
        over = int(np.count_nonzero(magnitude > FLOAT16_MAX))
        if over:
            big.append((name, over, float(magnitude.max())))
        tiny += int(np.count_nonzero((magnitude > 0) & (magnitude < FLOAT16_ZERO)))
    clamp = any(getattr(p, "clamp", False) for p in ctx.pass_configs("fp16"))
    if big:
        listed = ", ".join(f"'{n}' ({k} values, max {m:.4g})" for n, k, m in big[:5])
        more = f" and {len(big) - 5} more tensors" if len(big) > 5 else ""
        yield Finding(
            "warning",
            "fp16-range",
            f"{sum(k for _, k, _ in big)} weight value(s) exceed the float16 maximum "
            f"{FLOAT16_MAX:g}: {listed}{more}",
            "fp16 clamps them (clamp: true)"
            if clamp
            else "fp16 keeps these tensors in float32 (they do not shrink); "
            "clamp: true clamps them to +-65504 instead",
        )
    if nonfinite:
        yield Finding(
            "warning",
            "nonfinite-weights",
            f"{len(nonfinite)} weight tensor(s) contain inf or NaN: "
            + ", ".join(f"'{n}'" for n in nonfinite[:5]),
            "re-export the model; compressed outputs will not be finite either",
        )
    if tiny:
        yield Finding(
            "note",
            "fp16-underflow",
            f"{tiny} non-zero weight value(s) are below {FLOAT16_ZERO:.2g} and become 0 in "
            "float16 (counted in the fp16 report)",
            "usually harmless; keep the affected layers in float32 with block_nodes if "
            "validation shows a drop",
        )


def _check_duplicates(ctx: _Context) -> Iterator[Finding]:
    groups: dict[str, list[str]] = defaultdict(list)
    sizes: dict[str, int] = {}
    for site in tensor_sites(ctx.model.proto):
        tensor = site.tensor
        if int(np.prod(tensor.dims, dtype=np.int64)) < MIN_DUPLICATE_ELEMENTS:
            continue
        if tensor.data_type not in model_io.FLOAT_TYPES:
            continue
        values = np.ascontiguousarray(model_io.read_array(tensor, ctx.model.base_dir))
        digest = hashlib.sha256()
        digest.update(f"{tensor.data_type}:{tuple(tensor.dims)}".encode())
        digest.update(values.reshape(-1).view(np.uint8).data)
        key = digest.hexdigest()
        groups[key].append(site.name)
        sizes[key] = _nbytes(tensor)
    tied = {k: names for k, names in groups.items() if len(names) > 1}
    if not tied:
        return
    wasted = sum(sizes[k] * (len(names) - 1) for k, names in tied.items())
    examples = "; ".join(" = ".join(f"'{n}'" for n in names[:3]) for names in tied.values())
    yield Finding(
        "note",
        "duplicate-weights",
        f"{len(tied)} group(s) of identical weight tensors store {human_bytes(wasted)} more "
        f"than once: {_clip(examples)}",
        "tied weights are compressed once per copy; point every consumer at one initializer "
        "when re-exporting to save the bytes",
    )


def _check_constants(ctx: _Context) -> Iterator[Finding]:
    count = 0
    size = 0
    for site in constant_node_weights(ctx.model.proto):
        count += 1
        size += _nbytes(site.tensor)
    if not count:
        return
    needs_prepare = ctx.cfg is not None and bool(ctx.cfg.passes) and not ctx.cfg.prepare
    yield Finding(
        "warning" if needs_prepare else "note",
        "constant-weights",
        f"{count} weight tensor(s) ({human_bytes(size)}) are stored in Constant nodes, where "
        "many tools do not see them",
        "remove 'prepare: false' from the config so passes can compress them"
        if needs_prepare
        else "nothing to do: mcompress moves them to initializers before compressing "
        "(prepare: true, the default)",
    )


def _check_unused(ctx: _Context) -> Iterator[Finding]:
    names: list[str] = []
    size = 0
    for graph in ctx.model.graphs():
        used = names_used(graph)
        for tensor in graph.initializer:
            if tensor.name not in used:
                names.append(tensor.name)
                size += _nbytes(tensor)
    if names:
        yield Finding(
            "note",
            "unused-initializers",
            f"{len(names)} initializer(s) ({human_bytes(size)}) are never used: "
            + _clip(", ".join(f"'{n}'" for n in names[:5])),
            "the strip pass (first in every preset) removes them",
        )


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CHECKS = [
    _check_size,
    _check_runtime,
    _check_config,
    _check_inputs,
    _check_opset,
    _check_kernels,
    _check_weight_range,
    _check_activations,
    _check_duplicates,
    _check_constants,
    _check_unused,
]
