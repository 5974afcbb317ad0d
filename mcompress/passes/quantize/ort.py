"""onnxruntime.quantization, run quietly on file copies, and what its outputs hold.

onnxruntime's quantizers read and write files (and `import` of its 4-bit module configures the
root logger at INFO), so the pass hands them a temporary copy, silences their logging, and reads
their weights back to measure the quantization error of each one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcompress import runtime
from mcompress.errors import McompressError
from mcompress.graph import iter_graphs
from mcompress.model_io import (
    PROTOBUF_LIMIT,
    Model,
    is_external,
    make_runtime_compatible,
    read_array,
    save_model,
    tensor_bytes,
)
from mcompress.passes.quantize.math import (
    dequantize_linear,
    dequantize_matmul_nbits,
    error_stats,
)
from mcompress.runtime import error_line

QUANTIZED_SUFFIX = "_quantized"  # onnxruntime's name for a weight's integer initializer


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization (logging, warnings, print() from its calibrators and
    C++ warnings from its sessions), and keep the import of its 4-bit module from configuring
    the root logger: passes never print, and `--json` output must stay pure JSON."""
    import onnxruntime as ort

    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    previous = root.manager.disable
    logging.disable(logging.CRITICAL)
    ort.set_default_logger_severity(runtime.QUIET)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if guard is not None:
            root.removeHandler(guard)


def _feed_reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """A CalibrationDataReader over prepared feed dicts."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

        def __len__(self) -> int:
            return len(feeds)

    return _Reader()


def static(
    src: Path,
    dst: Path,
    feeds: list[dict[str, np.ndarray]],
    *,
    quant_format: str,
    per_channel: bool,
    weight_symmetric: bool,
    activation_symmetric: bool,
    method: str,
    exclude: list[str],
    cache: Path,
) -> dict[str, list[float]]:
    """Calibrated int8 quantization (QDQ or QOperator); returns the activation ranges used.

    reduce_range (7-bit weights) is onnxruntime's advice for x86 CPUs without VNNI, whose
    u8s8 kernels otherwise saturate: on the sample digits CNN it turns a 0.6-point accuracy
    drop into none.
    """
    with quiet():
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            load_tensors_data,
            quantize_static,
        )

        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        quantize_static(
            src,
            dst,
            _feed_reader(feeds),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            use_external_data_format=_external(src),
            calibrate_method=methods[method],
            calibration_cache_path=cache,
            extra_options={
                "WeightSymmetric": weight_symmetric,
                "ActivationSymmetric": activation_symmetric,
            },
        )
        ranges = load_tensors_data(cache)
    return {
        name: [float(np.min(data.range_value[0])), float(np.max(data.range_value[1]))]
        for name, data in ranges.items()
    }


def nbits(
    src: Path,
    dst: Path,
    include: set[str],
    *,
    block_size: int,
    symmetric: bool,
    accuracy_level: int | None,
) -> None:
    """4-bit block-wise weights: MatMul -> MatMulNBits, Gather -> GatherBlockQuantized."""
    with quiet():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        proto = onnx.load(str(src))
        opsets = {o.domain: o.version for o in proto.opset_import}
        others = [
            n.name
            for g in iter_graphs(proto.graph)
            for n in g.node
            if n.op_type in ("MatMul", "Gather") and n.name not in include
        ]
        quantizer = MatMulNBitsQuantizer(
            proto,
            bits=4,
            block_size=block_size,
            is_symmetric=symmetric,
            accuracy_level=accuracy_level,
            nodes_to_exclude=others,
            op_types_to_quantize=("MatMul", "Gather"),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer.process()
        result = quantizer.model.model
    # onnxruntime raises the default-domain opset to 21 whenever it quantizes a Gather (int4
    # DequantizeLinear needs it) without converting any op; GatherBlockQuantized lives in
    # com.microsoft and no default-domain op was added, so the model's own opset is restored.
    for entry in result.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.domain in opsets:
            entry.version = opsets[entry.domain]
    onnx.save_model(result, str(dst), **_save_options(dst, result))


def _external(path: Path) -> bool:
    """Whether a temporary model must keep external data (it would not fit in protobuf)."""
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) > 2**31 - 2**26


def _save_options(dst: Path, proto: onnx.ModelProto) -> dict[str, Any]:
    if proto.ByteSize() < 2**31 - 2**26:
        return {}
    return {
        "save_as_external_data": True,
        "all_tensors_to_one_file": True,
        "location": dst.name + ".data",
    }


# ---------------------------------------------------------------- does it run


def model_runs_once(
    model: Model, original: Path, seed: int, input_shapes: dict[str, tuple[int, ...]]
) -> str | None:
    """`runs_once` for a model in memory, as it will be saved (see `make_runtime_compatible`):
    serialised when it fits in protobuf and has no external data, else through a temporary
    file. The proto is not copied: a copy of a large model costs as much as writing it."""
    proto = model.proto
    external = any(is_external(t) for g in iter_graphs(proto.graph) for t in g.initializer)
    if external or tensor_bytes(proto) > PROTOBUF_LIMIT - 2**26:
        candidate = Model(onnx.ModelProto(), model.path, model.base_dir, external)
        candidate.proto.CopyFrom(proto)
        with tempfile.TemporaryDirectory(prefix="mcompress-check-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            save_model(candidate, path, external=True)
            return runs_once(path, candidate, original, seed, input_shapes)
    ir_version = proto.ir_version
    make_runtime_compatible(proto)
    try:
        serialized = proto.SerializeToString()
    finally:
        proto.ir_version = ir_version
    return runs_once(serialized, model, original, seed, input_shapes)


def runs_once(
    candidate: Path | bytes,
    inputs_of: Model | Path,
    original: Path,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
) -> str | None:
    """None when onnxruntime loads `candidate` (a file or a serialised model) and runs it once
    on random inputs for `inputs_of` (its model); else onnxruntime's first error line.

    A run failure counts only when the `original` model runs on the same inputs.
    """
    from mcompress.inputs import make_feeds

    # Kernels are looked up for every node as written; graph optimizations would only add
    # load time (constant-folding weight-only dequantization: ~60% of it on a small CNN).
    try:
        session = runtime.session(candidate, optimize=False)
    except Exception as exc:  # noqa: BLE001 - any load failure is the answer
        return error_line(exc)
    try:
        feeds = make_feeds(
            inputs_of,
            data=None,
            samples=1,
            seed=seed,
            input_shapes=input_shapes,
            session=session,
            smallest=True,
        ).feeds[0]
    except McompressError:
        return None
    try:
        session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - compare with the original before blaming quantization
        reference = runtime.session(original, optimize=False)
        try:
            reference.run(None, feeds)
        except Exception:  # noqa: BLE001 - the original fails too: not a quantization problem
            return None
        return error_line(exc)
    return None


# ---------------------------------------------------------------- what onnxruntime wrote


def _values(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return np.asarray(read_array(tensor, base_dir))
    return numpy_helper.to_array(tensor)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def ort_weight_stats(
    proto: onnx.ModelProto,
    base_dir: Path,
    originals: dict[str, tuple[onnx.TensorProto, int | None]],
    src_dir: Path,
) -> list[dict[str, Any]]:
    """Error of every original weight onnxruntime quantized, read back from its output.

    `originals` maps weight name -> (original tensor, channel axis for per-channel scales).
    Recognised: `<w>_quantized` + `_scale` + `_zero_point` (dynamic, static QDQ/QOperator),
    MatMulNBits and GatherBlockQuantized nodes.
    """
    inits = {t.name: t for g in iter_graphs(proto.graph) for t in g.initializer}
    rows: list[dict[str, Any]] = []
    axes: dict[str, tuple[int, int]] = {}
    for graph in iter_graphs(proto.graph):
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                axes[node.input[0]] = (
                    _attrs(node).get("axis", 1),
                    _attrs(node).get("block_size", 0),
                )
    for graph in iter_graphs(proto.graph):
        for node in graph.node:
            weight = _BLOCK_WEIGHT_INPUT.get(node.op_type)
            if weight is not None and node.input[weight] in inits:
                rows.extend(_block_row(node, inits, base_dir, originals, src_dir))
    done = {r["name"] for r in rows}
    for name, (tensor, axis) in originals.items():
        qname = name + QUANTIZED_SUFFIX
        if name in done or qname not in inits or name + "_scale" not in inits:
            continue
        parts = [inits[qname], inits[name + "_scale"]]
        zp = inits.get(name + "_zero_point")
        q_axis, block = axes.get(qname, (axis, 0))
        values = _values(parts[0], base_dir)
        restored = dequantize_linear(
            values,
            _values(parts[1], base_dir),
            None if zp is None else _values(zp, base_dir),
            q_axis,
            block,
        )
        extra = [zp] if zp is not None else []
        rows.append(_row(name, tensor, src_dir, restored, [*parts, *extra], 8, "onnxruntime"))
    return rows


def _row(
    name: str,
    original: onnx.TensorProto,
    src_dir: Path,
    restored: np.ndarray,
    stored: list[onnx.TensorProto],
    bits: int,
    method: str,
) -> dict[str, Any]:
    weight = np.asarray(read_array(original, src_dir), dtype=np.float32)
    mse, sqnr = error_stats(weight, restored.reshape(weight.shape))
    return {
        "name": name,
        "shape": list(weight.shape),
        "bits": bits,
        "method": method,
        "mse": mse,
        "sqnr_db": sqnr,
        "bytes_before": int(weight.nbytes),
        "bytes_after": sum(_stored_bytes(t) for t in stored),
    }


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return count * itemsize


def _original_name(qname: str, originals: dict[str, Any]) -> str | None:
    for suffix in ("_Q4", "_Q8", "_Q2"):
        if qname.endswith(suffix) and qname[: -len(suffix)] in originals:
            return qname[: -len(suffix)]
    return None


# Block-quantized nodes and the input holding their quantized weight.
_BLOCK_WEIGHT_INPUT = {"MatMulNBits": 1, "GatherBlockQuantized": 0}


def _block_row(
    node: onnx.NodeProto,
    inits: dict[str, onnx.TensorProto],
    base_dir: Path,
    originals: dict[str, tuple[onnx.TensorProto, int | None]],
    src_dir: Path,
) -> list[dict[str, Any]]:
    """The error row of the weight a MatMulNBits or GatherBlockQuantized node holds."""
    name = _original_name(node.input[_BLOCK_WEIGHT_INPUT[node.op_type]], originals)
    if name is None:
        return []
    restored, stored = block_weight(node, inits, base_dir)
    bits = int(_attrs(node).get("bits", 4))
    return [_row(name, originals[name][0], src_dir, restored, stored, bits, node.op_type)]


def block_weight(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], base_dir: Path
) -> tuple[np.ndarray, list[onnx.TensorProto]]:
    """The float weight a MatMulNBits ([K, N]) or GatherBlockQuantized node holds, and the
    initializers that store it."""
    a = _attrs(node)
    zp = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    zero_point = None if zp is None else _values(zp, base_dir)
    if node.op_type == "MatMulNBits":
        stored = [inits[i] for i in node.input[1:4] if i in inits]
        restored = dequantize_matmul_nbits(
            _values(stored[0], base_dir),
            _values(stored[1], base_dir),
            zero_point,
            k=int(a["K"]),
            n=int(a["N"]),
            bits=int(a.get("bits", 4)),
            block_size=int(a["block_size"]),
        )
        return restored, stored
    data, scales = inits[node.input[0]], inits[node.input[2]]
    restored = dequantize_linear(
        _values(data, base_dir).astype(np.int32),
        _values(scales, base_dir),
        None if zero_point is None else zero_point.astype(np.int32),
        int(a.get("quantize_axis", 1)),
        int(a.get("block_size", 128)),
    )
    return restored, [data, scales, *([zp] if zp is not None else [])]
