"""Time `mcompress fp16` against onnxruntime's and onnxconverter-common's float16 converters.

Same run, same models: a generated transformer-like encoder (26 nodes per block, 1,040 nodes
by default) and the shared classifier and VAD when ../shared/models exists. Each converter gets
a freshly loaded model and converts it in memory (`convert` column), and then file to file
(`file` column: load + convert + save); rounds alternate between the converters, so load
from other processes hits all of them alike. mcompress runs with its defaults (`compute: cpu`) and
with `compute: all, auto: false` (every op converted, the same work as the others); the
`compute: all` run with `auto: true` adds the one float32 analysis run. Targets: mcompress
<= 0.5x their time. Every converted model is also run in onnxruntime to report its max abs
error against float32 and whether it produced NaN/inf. Times are the best of `--repeat`.

    python benchmarks/bench_fp16.py [--repeat 5] [--blocks 40] [--dim 128]

onnxconverter-common is a bench-only dependency (`pip install onnxconverter-common`); its
column is skipped when it is not installed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mcompress import model_io
from mcompress.passes import fp16
from mcompress.passes.base import PassContext

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
F32 = TensorProto.FLOAT


def encoder_model(path: Path, blocks: int, dim: int) -> Path:
    """`blocks` attention + LayerNorm (decomposed) + FFN blocks: 26 nodes each."""
    r = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def weight(name: str, *shape: int, scale: float | None = None) -> str:
        std = scale if scale is not None else shape[0] ** -0.5
        inits.append(numpy_helper.from_array(r.normal(0, std, shape).astype(np.float32), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    inits.append(numpy_helper.from_array(np.array(dim**-0.5, np.float32), "scale"))
    inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    inits.append(numpy_helper.from_array(np.array(1e-5, np.float32), "eps"))
    x = "x"
    for b in range(blocks):
        p = f"b{b}_"
        q = node("MatMul", [x, weight(p + "wq", dim, dim)], p + "q")
        k = node("MatMul", [x, weight(p + "wk", dim, dim)], p + "k")
        v = node("MatMul", [x, weight(p + "wv", dim, dim)], p + "v")
        kt = node("Transpose", [k], p + "kt", perm=[0, 2, 1])
        s = node("Mul", [node("MatMul", [q, kt], p + "s"), "scale"], p + "s_scaled")
        a = node("MatMul", [node("Softmax", [s], p + "attn", axis=-1), v], p + "a")
        o = node("Add", [node("MatMul", [a, weight(p + "wo", dim, dim)], p + "o")], p + "o_b")
        nodes[-1].input.append(weight(p + "bo", dim, scale=0.02))
        r1 = node("Add", [x, o], p + "res1")
        mean = node("ReduceMean", [r1], p + "mean", axes=[-1])
        d = node("Sub", [r1, mean], p + "centered")
        var = node("ReduceMean", [node("Pow", [d, "two"], p + "sq")], p + "var", axes=[-1])
        sd = node("Sqrt", [node("Add", [var, "eps"], p + "var_eps")], p + "std")
        n = node("Div", [d, sd], p + "normed")
        g = node("Mul", [n, weight(p + "gamma", dim, scale=0.1)], p + "scaled")
        ln = node("Add", [g, weight(p + "beta", dim, scale=0.1)], p + "ln")
        f1 = node("MatMul", [ln, weight(p + "w1", dim, 4 * dim)], p + "f1")
        f1b = node("Add", [f1, weight(p + "b1", 4 * dim, scale=0.02)], p + "f1b")
        f2 = node(
            "MatMul", [node("Relu", [f1b], p + "act"), weight(p + "w2", 4 * dim, dim)], p + "f2"
        )
        f2b = node("Add", [f2, weight(p + "b2", dim, scale=0.02)], p + "f2b")
        x = node("Add", [ln, f2b], p + "out")
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("x", F32, [1, 16, dim])],
        [helper.make_tensor_value_info(x, F32, [1, 16, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def mcompress_converter(src: Path, options: dict[str, Any]) -> Callable[[model_io.Model], None]:
    def convert(model: model_io.Model) -> None:
        cfg = fp16.Config(**options)
        fp16.check(model, cfg)
        fp16.apply(model, cfg, PassContext(input_path=src))

    return convert


def ort_convert(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True)


def occ_convert(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(proto, keep_io_types=True)


def occ_available() -> bool:
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:
        return False
    return True


def feeds_for(path: Path) -> dict[str, np.ndarray]:
    """One plausible input per model (the VAD gets sr=16000 and a zero state)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    r = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        if inp.name == "x" and len(shape) == 4:
            shape = [1, 3, 48, 192]
        if inp.name == "input":
            shape = [1, 512]
        if inp.type == "tensor(int64)":
            feeds[inp.name] = np.array(16000, np.int64)
        elif inp.name == "state":
            feeds[inp.name] = np.zeros(shape, np.float32)
        else:
            feeds[inp.name] = r.uniform(-1, 1, shape).astype(np.float32)
    return feeds


def accuracy(src: Path, out: Path) -> str:
    """`max abs error vs float32, NaN/inf?` of a converted model, or why it does not run."""
    feeds = feeds_for(src)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    try:
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - report any load/run failure
        return f"fails: {str(exc).splitlines()[0][:60]}"
    err = max(
        float(np.abs(np.asarray(g, np.float32) - w).max()) for g, w in zip(got, want, strict=True)
    )
    bad = any(not np.isfinite(np.asarray(g, np.float32)).all() for g in got)
    return f"err {err:.2e}{' NaN/inf!' if bad else ''}"


@dataclass
class Converter:
    """One converter: `load` gives it a fresh model, `convert` converts it in memory, `save`
    writes the result."""

    label: str
    load: Callable[[], Any]
    convert: Callable[[Any], Any]
    save: Callable[[Any, Any, Path], None]


def converters(src: Path) -> list[Converter]:
    """mcompress in three settings, onnxruntime's converter and (if installed) onnxconverter's."""
    found = []
    for label, options in (
        ("mcompress (default: compute cpu)", {}),
        ("mcompress (compute all, auto off)", {"compute": "all", "auto": False}),
        ("mcompress (compute all, auto on)", {"compute": "all"}),
    ):
        found.append(
            Converter(
                label,
                lambda: model_io.load_model(src),
                mcompress_converter(src, options),
                lambda model, _, out: model_io.save_model(model, out),
            )
        )
    theirs = {"onnxruntime.transformers.float16": ort_convert}
    if occ_available():
        theirs["onnxconverter-common float16"] = occ_convert
    for label, fn in theirs.items():
        found.append(
            Converter(
                label,
                lambda: onnx.load(str(src)),
                fn,
                lambda _, converted, out: onnx.save(converted, str(out)),
            )
        )
    return found


def bench_model(src: Path, repeat: int, work: Path) -> None:
    """Best convert and file-to-file times per converter; rounds interleave the converters so
    load from other processes hits all of them alike."""
    nodes = sum(1 for _ in onnx.load(str(src)).graph.node)
    print(f"\n{src.name}: {nodes} main-graph nodes, {src.stat().st_size / 1e6:.1f} MB")
    found = converters(src)
    best = {c.label: [float("inf"), float("inf")] for c in found}
    outputs = {c.label: work / f"out{i}.onnx" for i, c in enumerate(found)}
    for _ in range(repeat):
        for c in found:
            model = c.load()
            start = time.perf_counter()
            converted = c.convert(model)
            best[c.label][0] = min(best[c.label][0], time.perf_counter() - start)
            start = time.perf_counter()
            model = c.load()
            c.save(model, c.convert(model), outputs[c.label])
            best[c.label][1] = min(best[c.label][1], time.perf_counter() - start)
            del converted
    print(f"  {'converter':38s} {'convert':>9s} {'file':>9s}   output")
    for c in found:
        t_convert, t_file = best[c.label]
        result = accuracy(src, outputs[c.label])
        print(f"  {c.label:38s} {t_convert * 1000:8.0f}ms {t_file * 1000:8.0f}ms   {result}")
    for mine in found[:2]:
        for other in found[3:]:
            convert = best[mine.label][0] / best[other.label][0]
            file = best[mine.label][1] / best[other.label][1]
            print(
                f"  {mine.label} / {other.label}: convert {convert:.2f}x, file {file:.2f}x"
                " (target <= 0.5x)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = [encoder_model(work / "encoder.onnx", args.blocks, args.dim)]
        models += [p for p in sorted(SHARED.glob("*.onnx")) if p.is_file()]
        for src in models:
            bench_model(src, args.repeat, work)


if __name__ == "__main__":
    main()
