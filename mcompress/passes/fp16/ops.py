"""Operator facts the fp16 pass needs: element types from ONNX schemas, and where half runs.

Types are read from each operator's schema (type parameters shared between inputs and outputs),
so no shape inference pass over the whole model is needed. The CPU kernel tables below were
measured on x86-64 (version: benchmarks/README.md) by building one single-node model per op
and opset and checking whether the session loads it with no Cast inserted by onnxruntime
(`tests/test_fp16.py` re-checks every entry against the installed onnxruntime):

| float16 kernel on the CPU provider          | ops                                                |
|---------------------------------------------|----------------------------------------------------|
| native (no Cast inserted)                   | data movement (Reshape, Transpose, Flatten,        |
|                                             | Squeeze, Unsqueeze, Concat, Split, Slice, Gather*, |
|                                             | Scatter*, Expand, Compress, ReverseSequence),      |
|                                             | Identity, Cast, Shape, ConstantOfShape, Round,     |
|                                             | Sign, Mod, IsNaN, Max/Min/Clip (opset >= 12),      |
|                                             | LayerNormalization (opset >= 17)                   |
| none: onnxruntime wraps the op in Casts to  | Conv, ConvTranspose, MatMul, Gemm, Add, Sub, Mul,  |
| float32 (runs, but slower and rounded)      | Div, Pow, Relu, Sigmoid, Tanh, Exp, Log, Sqrt,     |
|                                             | Erf, Softmax, pooling, BatchNormalization,         |
|                                             | InstanceNormalization, Reduce*, Resize, Pad, Tile, |
|                                             | Where, LSTM, GRU, RNN, Einsum, TopK, ArgMax, ...   |

Even where a half kernel exists, onnxruntime runs a half node in float32 when its neighbours
are float32 ("isolated" nodes; its weights are fused back to float32 at load), and it drops
Cast pairs float32 -> half -> float32 between such nodes.

bfloat16: the CPU provider has no compute kernels at all (Add, MatMul, Conv, Relu, ... fail to
load with NOT_IMPLEMENTED; only data movement and LayerNormalization load), so bfloat16 is
storage-only there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import onnx
from onnx import TensorProto, defs, helper

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
BFLOAT16 = TensorProto.BFLOAT16

# op -> lowest opset whose version of the op has a native float16 CPU kernel.
# fmt: off
FP16_CPU_KERNELS: dict[str, int] = {
    **dict.fromkeys((
        "Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split",
        "Slice", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Expand",
        "Compress", "ReverseSequence", "Cast", "Shape", "ConstantOfShape", "Round", "Sign", "Mod",
        "IsNaN",
    ), 1),
    "Max": 12, "Min": 12, "Clip": 12, "LayerNormalization": 17,
}

# Ops whose result is exact in any precision (they move or select values): they follow their
# inputs' precision, so they never add a Cast pair around themselves.
NEUTRAL_OPS = frozenset((
    "Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Expand",
    "Tile", "Pad", "Compress", "ReverseSequence", "DepthToSpace", "SpaceToDepth", "Dropout",
    "Relu", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Max", "Min", "Abs", "Neg",
    "Sign", "Where", "Clip",
))

# Ops whose float output type comes from an attribute or that are not worth converting: their
# outputs stay float32 (a consumer in half precision reads them through one Cast).
FIXED_TYPE_OPS = frozenset((
    "Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Multinomial", "Bernoulli", "EyeLike",
))
# fmt: on

# Ops whose output types depend on attributes, not only on input types.
ATTRIBUTE_TYPED_OPS = FIXED_TYPE_OPS | {"Cast"}

# Inputs that read an input's value whatever its float type (a Cast pair would be wasted).
TYPE_AGNOSTIC_OPS = frozenset(("Cast", "Shape"))

CONTROL_FLOW_OPS = frozenset(("If", "Loop", "Scan"))

# Numerically fragile or precision-critical ops kept in float32 unless the user says otherwise.
DEFAULT_BLOCK_OPS: tuple[str, ...] = (
    "Range",
    "CumSum",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceLogSumExp",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
)

# (op, type parameter) pairs whose inputs keep float32 even when the op runs in half.
EXACT_PARAMS = frozenset({("Resize", "T2")})

_TYPE_NAMES = {
    name.lower(): value
    for name, value in TensorProto.DataType.items()
    if value != TensorProto.UNDEFINED
}
_TYPE_NAMES["float"] = FLOAT
_TYPE_NAMES["double"] = TensorProto.DOUBLE


def elem_of_type_str(type_str: str) -> int:
    """`tensor(float)` -> FLOAT; anything that is not a plain tensor -> 0 (opaque)."""
    if not type_str.startswith("tensor(") or not type_str.endswith(")"):
        return 0
    return _TYPE_NAMES.get(type_str[7:-1], 0)


@dataclass(frozen=True)
class OpInfo:
    """What a schema says about types: the parameter of each formal input and output."""

    inputs: tuple[str, ...]
    last_variadic: bool
    outputs: tuple[str, ...]
    params: dict[str, frozenset[int]]  # type parameter -> allowed element types

    def input_param(self, index: int) -> str | None:
        """Type parameter (or fixed type string) of actual input `index`."""
        if index < len(self.inputs):
            return self.inputs[index]
        return self.inputs[-1] if self.inputs and self.last_variadic else None

    def output_param(self, index: int) -> str | None:
        if index < len(self.outputs):
            return self.outputs[index]
        return self.outputs[-1] if self.outputs else None


@cache
def op_info(op_type: str, domain: str, opset: int) -> OpInfo | None:
    """The schema facts of `op_type` at `opset`, or None for ops onnx does not know."""
    try:
        schema = defs.get_schema(op_type, opset, "" if domain == "ai.onnx" else domain)
    except defs.SchemaError:
        return None
    variadic = defs.OpSchema.FormalParameterOption.Variadic
    params = {
        tc.type_param_str: frozenset(elem_of_type_str(t) for t in tc.allowed_type_strs)
        for tc in schema.type_constraints
    }
    inputs = tuple(p.type_str for p in schema.inputs)
    heterogeneous = [
        p.type_str for p in schema.inputs if p.option == variadic and not p.is_homogeneous
    ]
    for name in heterogeneous:
        params.pop(name, None)
    last = bool(schema.inputs) and schema.inputs[-1].option == variadic
    return OpInfo(inputs, last, tuple(p.type_str for p in schema.outputs), params)


def output_types(
    node: onnx.NodeProto, info: OpInfo | None, in_types: list[int], declared: dict[str, int]
) -> list[int]:
    """Element type of each output of `node` given its input types (0 when unknown)."""
    result = []
    for j, name in enumerate(node.output):
        elem = _schema_output_type(node, info, in_types, j) if info else 0
        result.append(elem or declared.get(name, 0))
    return result


def _schema_output_type(node: onnx.NodeProto, info: OpInfo, in_types: list[int], j: int) -> int:
    param = info.output_param(j)
    if param is None:
        return 0
    if param not in info.params:
        return elem_of_type_str(param)
    for i, elem in enumerate(in_types):
        if elem and info.input_param(i) == param:
            return elem
    allowed = info.params[param]
    if len(allowed) == 1:
        return next(iter(allowed))
    return _attribute_type(node, in_types)


def _attribute_type(node: onnx.NodeProto, in_types: list[int]) -> int:
    """Output types set by an attribute (Cast `to`, ConstantOfShape `value`, `dtype`...)."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Cast" and "to" in attrs:
        return int(attrs["to"].i)
    if node.op_type == "ConstantOfShape":
        return int(attrs["value"].t.data_type) if "value" in attrs else FLOAT
    if node.op_type == "Constant":
        return int(attrs["value"].t.data_type) if "value" in attrs else 0
    if "dtype" in attrs:
        return int(attrs["dtype"].i)
    if node.op_type in ("RandomNormal", "RandomUniform"):
        return FLOAT
    if node.op_type in ("RandomNormalLike", "RandomUniformLike", "EyeLike", "Bernoulli"):
        return in_types[0] if in_types else 0
    return 0


def half_kernel_on_cpu(op_type: str, opset: int, half: int) -> bool:
    """True when onnxruntime's CPU provider has a native kernel of `op_type` for `half`."""
    if half != FLOAT16:
        return False
    return opset >= FP16_CPU_KERNELS.get(op_type, 10**6)


@cache
def schema_types(
    op_type: str, opset: int, half: int, in_elems: tuple[int, ...], n_out: int
) -> tuple[tuple[int, ...], tuple[bool, ...], tuple[bool, ...], tuple[bool, ...]]:
    """Output types, converted inputs/outputs and exact inputs of a default-domain op whose
    types follow from its input types alone (cached: a model repeats the same few patterns)."""
    info = op_info(op_type, "", opset)
    node = helper.make_node(op_type, [""] * len(in_elems), [f"o{j}" for j in range(n_out)])
    out_elems = output_types(node, info, list(in_elems), {})
    conv_in, conv_out = converted_io(node, info, list(in_elems), out_elems, half)
    exact = exact_inputs(node, info, list(in_elems))
    return tuple(out_elems), tuple(conv_in), tuple(conv_out), tuple(exact)


def exact_inputs(node: onnx.NodeProto, info: Any, in_elems: list[int]) -> list[bool]:
    """Float32 inputs whose values must not be rounded: fixed `tensor(float)` inputs such as
    Resize scales, and EXACT_PARAMS such as Resize roi."""
    if info is None:
        return [False] * len(in_elems)
    exact = []
    for i, elem in enumerate(in_elems):
        param = info.input_param(i)
        fixed = param is not None and param not in info.params
        exact.append(elem == FLOAT and (fixed or (node.op_type, param) in EXACT_PARAMS))
    return exact


def converted_io(
    node: onnx.NodeProto, info: Any, in_elems: list[int], out_elems: list[int], half: int
) -> tuple[list[bool], list[bool]]:
    """Which inputs and outputs switch to half when `node` runs in half."""
    if info is None:
        return [False] * len(in_elems), [False] * len(out_elems)
    bound = {info.input_param(i) for i, e in enumerate(in_elems) if e == FLOAT}
    bound |= {info.output_param(j) for j, e in enumerate(out_elems) if e == FLOAT}
    params = {
        p
        for p in bound
        if p in info.params and half in info.params[p] and (node.op_type, p) not in EXACT_PARAMS
    }
    conv_in = [e == FLOAT and info.input_param(i) in params for i, e in enumerate(in_elems)]
    conv_out = [e == FLOAT and info.output_param(j) in params for j, e in enumerate(out_elems)]
    return conv_in, conv_out
