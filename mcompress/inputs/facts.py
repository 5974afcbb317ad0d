"""What the graph says about a model's inputs: names, dtypes, dims, the value rules random
inputs follow (index ranges, compared constants, recurrent state) and how to describe them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcompress import model_io
from mcompress.errors import DataError

DEFAULT_INT_RANGE = (0, 9)
# Names of dynamic dimensions that mean "batch" (set to 1 in random inputs); the one list.
BATCH_NAMES = frozenset({"n", "b", "batch", "batch_size", "batchsize", "bs", "num_batches"})
_STATE_NAME = re.compile(
    r"(^|[_.\-/])(state|states|h|c|h0|c0|hn|cn|hidden|cell|memory|mem|cache|past\w*)"
    r"($|[_.\-/\d])",
    re.IGNORECASE,
)
PASS_THROUGH = {"Cast", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand"}
_COMPARE = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}


@dataclass
class InputSet:
    """Feeds for onnxruntime (one dict per run), optional labels, and how they were made."""

    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    synthetic: bool = True
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelInput:
    """One graph input that must be fed: its dims are ints, dim names, or None (unnamed)."""

    name: str
    dtype: np.dtype
    dims: list[int | str | None]


def graph_inputs(proto: onnx.ModelProto) -> list[ModelInput]:
    """Inputs that must be fed (old IR versions also list initializers as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    found = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tensor_type = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise DataError(f"input '{vi.name}' is not a tensor; mcompress cannot feed it")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        dims: list[int | str | None] = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param if d.HasField("dim_param") else None)
        found.append(ModelInput(vi.name, dtype, dims))
    return found


def constants(model: model_io.Model) -> dict[str, onnx.TensorProto]:
    """Every initializer and Constant-node tensor, by name, over all graphs."""
    consts: dict[str, onnx.TensorProto] = {}
    for graph in model.graphs():
        for tensor in graph.initializer:
            consts[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        consts[node.output[0]] = attr.t
    return consts


def consumers(model: model_io.Model, name: str) -> Iterator[tuple[onnx.NodeProto, int]]:
    """Nodes (in any graph) that read `name`, with the input slot, following pass-through ops."""
    seen = {name}
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for graph in model.graphs():
            for node in graph.node:
                for slot, value in enumerate(node.input):
                    if value != current:
                        continue
                    yield node, slot
                    if slot == 0 and (node.op_type in PASS_THROUGH or node.op_type == "Gather"):
                        for out in node.output:
                            if out and out not in seen:
                                seen.add(out)
                                frontier.append(out)


def int_rule(model: model_io.Model, inp: ModelInput, consts: dict[str, onnx.TensorProto]) -> Any:
    """('range', low, high, why) or ('constant', value, why) for an integer input."""
    scalar = all(isinstance(d, int) and d == 1 for d in inp.dims)
    compared: tuple[str, int, str] | None = None
    for node, slot in consumers(model, inp.name):
        if node.op_type == "Gather" and slot == 1 and node.input[0] in consts:
            table = consts[node.input[0]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if len(table.dims) > axis:
                rows = int(table.dims[axis])
                why = f"indices into '{node.input[0]}' ({rows} rows, Gather '{node.name}')"
                return ("range", 0, rows - 1, why)
        if scalar and compared is None and node.op_type in _COMPARE:
            other = node.input[1 - slot] if len(node.input) == 2 and slot < 2 else ""
            tensor = consts.get(other)
            if tensor is not None and int(np.prod(tensor.dims, dtype=np.int64)) == 1:
                value = int(numpy_helper.to_array(tensor).reshape(-1)[0])
                compared = ("constant", value, f"compared with model constant ({node.op_type})")
    if compared is not None:
        return compared
    return ("range", *DEFAULT_INT_RANGE, "default range")


def is_state(inp: ModelInput, output_names: list[str]) -> bool:
    """Recurrent state: a state-like name, or an input fed back from an output."""
    if inp.dtype.kind != "f":
        return False
    if _STATE_NAME.search(inp.name):
        return True
    base = inp.name.lower()
    fed_back = {f"{base}n", f"{base}_out", f"{base}_n", f"next_{base}", f"new_{base}"}
    if "past" in base:
        fed_back.add(base.replace("past", "present"))
    return any(o.lower() in fed_back for o in output_names)


def fill(rule: Any, shape: list[int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    kind = rule[0]
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "zeros":
        return np.zeros(shape, dtype)
    if kind == "constant":
        return np.full(shape, rule[1], dtype)
    if kind == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(rule[1], rule[2] + 1, shape).astype(dtype)


def describe(
    inp: ModelInput, shape: list[int], rule: Any, feeds: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    kind = rule[0]
    if kind == "range":
        fill = f"integers {rule[1]}..{rule[2]} ({rule[3]})"
    elif kind == "constant":
        fill = f"constant {rule[1]} ({rule[2]})"
    else:
        fill = rule[1]
    values = [f[inp.name] for f in feeds]
    return {
        "dtype": str(inp.dtype),
        "model_shape": fmt_dims(inp.dims),
        "shape": shape,
        "fill": fill,
        **value_range(values),
    }


# ---------------------------------------------------------------- helpers


def value_range(values: list[np.ndarray]) -> dict[str, Any]:
    nonempty = [v for v in values if v.size]
    if not nonempty or nonempty[0].dtype.kind not in "fiub":
        return {"min": None, "max": None}
    low = min(float(v.min()) for v in nonempty)
    high = max(float(v.max()) for v in nonempty)
    if nonempty[0].dtype.kind in "iub":
        return {"min": int(low), "max": int(high)}
    return {"min": round(low, 6), "max": round(high, 6)}


def fixed_batch(d: int | str | None) -> bool:
    return isinstance(d, int) and d > 1


def dim_text(d: int | str | None) -> str:
    return str(d) if isinstance(d, int) else (d or "?")


def fmt_dims(dims: list[int | str | None]) -> str:
    return "[" + ", ".join(dim_text(d) for d in dims) + "]"


def fmt(shape: Any) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"
