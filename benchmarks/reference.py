"""The tools a user would otherwise run, one per pass, as child-process entry points.

    python benchmarks/reference.py quantize|quantize4|fp16|prune|cluster SRC DST

- quantize: onnxruntime.quantization.quantize_dynamic with its defaults;
- quantize4: onnxruntime's MatMulNBitsQuantizer (4-bit, symmetric, blocks of 32, as mcompress
  --bits 4 stores them; accuracy_level 4, int8 compute, the setting its kernels are fast with);
- fp16: onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types);
- prune: numpy magnitude pruning, 50% of every float weight of >= 1024 values (initializers
  and Constant nodes of the main graph and of `If`/`Loop` bodies), per tensor: load with onnx,
  prune, save;
- cluster: plain numpy 1-D Lloyd k-means (K=256, linear init, 20 steps), per tensor, same
  weights.

Models over 2 GB are written with external data, like mcompress does.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MIN_ELEMENTS = 1024
SPARSITY = 0.5
CLUSTERS = 256
LLOYD_STEPS = 20


def _save(model: onnx.ModelProto, dst: Path, big: bool) -> None:
    onnx.save_model(
        model, str(dst), save_as_external_data=big, location=dst.name + ".data", size_threshold=1024
    )


def _float_weights(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Float tensors of >= MIN_ELEMENTS values: initializers and Constant nodes' values of
    the main graph and of every subgraph (an exported CNN may hold every weight in Constant
    nodes, and an exported VAD every weight inside `If` branches; a user's script must edit
    those, or it compresses nothing)."""
    tensors: list[onnx.TensorProto] = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors += list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.name == "value":
                    tensors.append(attr.t)
                graphs += [attr.g] if attr.HasField("g") else list(attr.graphs)
    return [
        t
        for t in tensors
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= MIN_ELEMENTS
    ]


def magnitude_prune(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1).copy()
    k = int(round(SPARSITY * flat.size))
    magnitudes = np.abs(flat)
    flat[magnitudes <= np.partition(magnitudes, k - 1)[k - 1]] = 0
    return flat.reshape(values.shape)


def lloyd(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    centroids = np.linspace(flat.min(), flat.max(), CLUSTERS, dtype=np.float32)
    for _ in range(LLOYD_STEPS):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
        sums = np.bincount(labels, weights=flat, minlength=CLUSTERS)
        counts = np.bincount(labels, minlength=CLUSTERS)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids).astype(np.float32)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
    return centroids[labels].reshape(values.shape)


def main(kind: str, src: Path, dst: Path) -> None:
    logging.disable(logging.WARNING)
    big = sum(p.stat().st_size for p in src.parent.glob(src.name + "*")) > 2**31 - 2**26
    if kind == "quantize":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(src, dst, use_external_data_format=big)
        return
    if kind == "quantize4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(src)), block_size=32, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
        _save(quantizer.model.model, dst, big)
        return
    model = onnx.load(str(src))
    if kind == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True)
    else:
        edit = magnitude_prune if kind == "prune" else lloyd
        for tensor in _float_weights(model):
            tensor.CopyFrom(
                numpy_helper.from_array(edit(numpy_helper.to_array(tensor)), tensor.name)
            )
    _save(model, dst, big)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
