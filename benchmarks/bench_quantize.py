"""Time `mcompress quantize` against calling onnxruntime's `quantize_dynamic` directly.

Same run, same models: the shared classifier and VAD (when ../shared/models exists), a
generated 20M-parameter MatMul stack and a BERT-like encoder (30522 x 768 embedding `Gather`,
MatMul layers; 52M parameters). mcompress is the in-process pipeline with validation disabled
(load, prepare, quantize, run-once check, pack, save, sizes); onnxruntime is `quantize_dynamic`
on a file, with its defaults and with the settings mcompress uses (per-channel uint8). The
classifier keeps its weights in Constant nodes, which `quantize_dynamic` ignores, so its copy
for onnxruntime has them converted to initializers first (not timed). Each timing is the best
of `--repeat` runs. Prints both times, their ratio (target <= 1.3x), output sizes, and totals.
On the two small shared models both take well under 0.3 s, so their ratios measure fixed
costs (mcompress's run-once check and BatchNormalization folding; onnxruntime's output of the
VAD is 98% of its input: it quantizes almost nothing there), not how either scales.

    python benchmarks/bench_quantize.py [--repeat 3] [--params 20000000] [--layers 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcompress import config, model_io, pipeline
from mcompress.prepare import constants_to_initializers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"


def matmul_model(path: Path, params: int) -> Path:
    """A stack of square MatMul+Relu layers with about `params` weights."""
    dim, layers = 2048, max(1, round(params / 2048**2))
    r = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        weight = r.normal(0, dim**-0.5, (dim, dim)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def bert_like(path: Path, layers: int) -> Path:
    """Token embedding + `layers` encoder-shaped blocks (Q/K/V/output 768x768, FFN 768x3072)."""
    dim, ffn, vocab = 768, 3072, 30522
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(r.normal(0, 0.02, (vocab, dim)).astype(np.float32), "emb")]
    nodes = [helper.make_node("Gather", ["emb", "tokens"], ["h0"], name="embed")]
    h = "h0"

    def matmul(x: str, name: str, rows: int, cols: int) -> str:
        weight = r.normal(0, rows**-0.5, (rows, cols)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"{name}.w"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [name], name=name))
        return name

    for i in range(layers):
        qkv = [matmul(h, f"l{i}.{p}", dim, dim) for p in "qkv"]
        nodes.append(helper.make_node("Sum", qkv, [f"l{i}.attn"]))
        o = matmul(f"l{i}.attn", f"l{i}.o", dim, dim)
        nodes.append(helper.make_node("Add", [h, o], [f"l{i}.res1"]))
        up = matmul(f"l{i}.res1", f"l{i}.up", dim, ffn)
        nodes.append(helper.make_node("Relu", [up], [f"l{i}.act"]))
        down = matmul(f"l{i}.act", f"l{i}.down", ffn, dim)
        nodes.append(helper.make_node("Add", [f"l{i}.res1", down], [f"l{i}.out"]))
        h = f"l{i}.out"
    graph = helper.make_graph(
        nodes,
        "bert_like",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["batch", "sequence", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_mcompress(src: Path, out: Path) -> tuple[float, float]:
    """(pipeline seconds, quantize pass seconds) of one run."""
    cfg = config.build({"passes": [{"type": "quantize"}], "validate": {"enabled": False}})
    start = time.perf_counter()
    report = pipeline.run(cfg, pipeline.RunOptions(input_path=src, output=out, force=True))
    return time.perf_counter() - start, report.passes[0].seconds


def ort_input(src: Path, work: Path) -> tuple[Path, str]:
    """The model as `quantize_dynamic` can use it (Constant-node weights as initializers)."""
    model = model_io.load_model(src)
    moved = constants_to_initializers(model)
    if not moved:
        return src, ""
    path = work / f"{src.stem}.initializers.onnx"
    onnx.save(model.proto, str(path))
    return path, f"{moved} Constant nodes -> initializers first (untimed)"


def run_ort(src: Path, out: Path, same_settings: bool) -> None:
    """onnxruntime's defaults, or the settings mcompress passes it (per-channel uint8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if same_settings:
        quantize_dynamic(src, out, per_channel=True, weight_type=QuantType.QUInt8)
    else:
        quantize_dynamic(src, out)


Totals = dict[str, float]


def _size(path: Path, src: Path) -> str:
    size = model_io.disk_size(path)
    return f"{size / 1e6:.3f} MB ({100 * size / model_io.disk_size(src):.1f}% of input)"


def bench(name: str, src: Path, work: Path, repeat: int, totals: Totals) -> None:
    mc_out = work / f"{name}.mcompress.onnx"
    runs = [run_mcompress(src, mc_out) for _ in range(repeat)]
    mc_seconds = min(r[0] for r in runs)
    pass_seconds = min(r[1] for r in runs)
    totals["mcompress"] = totals.get("mcompress", 0.0) + mc_seconds
    ort_src, note = ort_input(src, work)
    print(f"\n{name}: {src.name}, {model_io.disk_size(src) / 1e6:.2f} MB")
    print(
        f"  mcompress quantize     {mc_seconds:7.2f} s (pass {pass_seconds:.2f} s)  "
        f"-> {_size(mc_out, src)}"
    )
    if note:
        print(f"  onnxruntime input: {note}")
    for same in (False, True):
        ort_out = work / f"{name}.ort{int(same)}.onnx"
        label = "quantize_dynamic, " + ("per-channel uint8" if same else "defaults")
        try:
            seconds = best_of(repeat, lambda: run_ort(ort_src, ort_out, same))  # noqa: B023
        except Exception as exc:  # noqa: BLE001 - report onnxruntime's failure and go on
            print(f"  {label:30s} FAILED: {str(exc).splitlines()[0][:100]}")
            totals[label] = float("nan")
            continue
        totals[label] = totals.get(label, 0.0) + seconds
        print(
            f"  {label:30s} {seconds:7.2f} s  -> {_size(ort_out, src)}   "
            f"ratio mcompress/onnxruntime {mc_seconds / seconds:.2f}x "
            f"(pass only {pass_seconds / seconds:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--layers", type=int, default=4, help="BERT-like blocks (0: skip)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # onnxruntime.quantization logs every node at INFO
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = [
            ("classifier", SHARED / "ppocr_mobile_v2_cls.onnx"),
            ("vad", SHARED / "silero_vad_op18_ifless.onnx"),
        ]
        totals: Totals = {}
        for name, path in models:
            if path.is_file():
                bench(name, path, work, args.repeat, totals)
        bench("matmul", matmul_model(work / "matmul.onnx", args.params), work, args.repeat, totals)
        if args.layers:
            src = bert_like(work / "bert_like.onnx", args.layers)
            bench("bert-like", src, work, args.repeat, totals)
        ours = totals.pop("mcompress")
        print(f"\ntotal over these models: mcompress quantize {ours:.2f} s")
        for label, seconds in totals.items():
            print(
                f"  {label:30s} {seconds:7.2f} s   ratio mcompress/onnxruntime "
                f"{ours / seconds:.2f}x"
            )


if __name__ == "__main__":
    main()
