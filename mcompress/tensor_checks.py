"""Checks of every stored tensor's declaration against its data, run when a model is loaded:
a malformed file (bad external-data offsets, NUL in a location, dims its bytes cannot fill)
is one line naming the tensor, not a numpy error deep inside a pass."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper

from mcompress.errors import ModelError

# Two values per byte.
_PACKED_4BIT = {
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
    *([onnx.TensorProto.FLOAT4E2M1] if hasattr(onnx.TensorProto, "FLOAT4E2M1") else []),
}
_NOT_RAW = {onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED}


def check_tensors(proto: onnx.ModelProto) -> None:
    """Every initializer and Constant value: non-negative dims; inline raw bytes matching
    them; external offset and length non-negative integers, length covering the dims, a
    location without NUL. (Whether the external file is long enough is checked by model_io.)"""
    for tensor in _tensors(proto.graph):
        if any(d < 0 for d in tensor.dims):
            raise _bad(tensor, f"has negative dims {list(tensor.dims)}")
        if tensor.data_type in _NOT_RAW:
            continue
        need = expected_nbytes(tensor)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external(tensor, need)
        elif tensor.raw_data:
            if len(tensor.raw_data) != need:
                raise _bad(
                    tensor,
                    f"holds {len(tensor.raw_data)} bytes but its dims {list(tensor.dims)} "
                    f"need {need}",
                )
        elif tensor.data_type not in _PACKED_4BIT:
            _check_typed(tensor)


def expected_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes the tensor's dims need in raw form (exact, no integer overflow)."""
    count = math.prod(int(d) for d in tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize * count


def external_int(tensor: onnx.TensorProto, key: str) -> int | None:
    """The external-data `offset` or `length` of `tensor` (None when absent)."""
    for entry in tensor.external_data:
        if entry.key == key:
            try:
                value = int(entry.value)
            except ValueError:
                what = f"has external-data {key} '{entry.value}', not a number"
                raise _bad(tensor, what) from None
            if value < 0:
                raise _bad(tensor, f"has a negative external-data {key} ({value})")
            return value
    return None


def _check_external(tensor: onnx.TensorProto, need: int) -> None:
    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    if "\0" in location:
        raise _bad(tensor, "has a NUL character in its external-data location")
    external_int(tensor, "offset")
    length = external_int(tensor, "length")
    if length is not None and length < need:
        raise _bad(
            tensor,
            f"has external-data length {length} but its dims {list(tensor.dims)} need {need} bytes",
        )


def _check_typed(tensor: onnx.TensorProto) -> None:
    """A tensor stored in typed fields (float_data, int64_data, ...) holds one value per
    element (two for complex types)."""
    stored = sum(
        len(field)
        for field in (
            tensor.float_data,
            tensor.int32_data,
            tensor.int64_data,
            tensor.double_data,
            tensor.uint64_data,
        )
    )
    complex_types = (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128)
    need = math.prod(int(d) for d in tensor.dims) * (2 if tensor.data_type in complex_types else 1)
    if stored != need:
        raise _bad(tensor, f"holds {stored} values but its dims {list(tensor.dims)} need {need}")


def _bad(tensor: onnx.TensorProto, what: str) -> ModelError:
    return ModelError(f"tensor '{tensor.name}' {what}; the model file is malformed")


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant values of `graph` and of every nested subgraph."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _tensors(sub)
