"""Doctor checks of the model against the passes (opset, kernels) and of its weights."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper

from mcompress import model_io
from mcompress.analysis import constant_node_weights, tensor_sites
from mcompress.doctor.findings import Context, Finding, clip
from mcompress.graph import names_used
from mcompress.passes.fp16.ops import FP16_CPU_KERNELS
from mcompress.render_terminal import human_bytes

FLOAT16_MAX = 65504.0
# Magnitudes below half the smallest float16 subnormal (2**-24) round to zero in float16.
FLOAT16_ZERO = 2.0**-25
PER_CHANNEL_MIN_OPSET = 13
# Tensors smaller than this are ignored by the duplicate check (shape constants, scalars).
MIN_DUPLICATE_ELEMENTS = 16
# Ops whose weights onnxruntime's CPU provider can compute with in int8 (MatMulInteger,
# ConvInteger/QLinearConv, DynamicQuantizeLSTM, QAttention; Gather reads int8 tables).
# Weights of other ops are at best stored in int8 and dequantized to float at load.
INTEGER_CPU = frozenset({"Conv", "MatMul", "Gemm", "Gather", "LSTM", "Attention"})
# Weights in ops without an integer kernel are reported from this share of all weight bytes.
INTEGER_REPORT_SHARE = 0.1
# Ops that carry no arithmetic worth a kernel check (data movement, shapes, control flow).
_NO_COMPUTE = frozenset({"Constant", "If", "Loop", "Scan", "Identity", "Shape", "Size"})


# ---------------------------------------------------------------- passes vs. the model


def check_opset(ctx: Context) -> Iterator[Finding]:
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


def check_kernels(ctx: Context) -> Iterator[Finding]:
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


def _float_sites(ctx: Context) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(name, values, in Constant node) of every float32/float64 weight, wherever stored."""
    for site in tensor_sites(ctx.model.proto):
        if site.tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            yield site.name, model_io.read_array(site.tensor, ctx.model.base_dir), site.in_constant


def check_weight_range(ctx: Context) -> Iterator[Finding]:
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


def check_duplicates(ctx: Context) -> Iterator[Finding]:
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
        f"than once: {clip(examples)}",
        "tied weights are compressed once per copy; point every consumer at one initializer "
        "when re-exporting to save the bytes",
    )


def check_constants(ctx: Context) -> Iterator[Finding]:
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


def check_unused(ctx: Context) -> Iterator[Finding]:
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
            + clip(", ".join(f"'{n}'" for n in names[:5])),
            "the strip pass (first in every preset) removes them",
        )
