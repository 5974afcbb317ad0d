"""onnxruntime latency of a structured-pruned model against its original, in the same run.

    python benchmarks/bench_prune_latency.py [--model PATH] [--sparsity 0.3] [--runs 400]

Prunes with the same pipeline `mcompress prune --structured` runs, then times both models
alternately (one call each, over and over) so background load hits both equally, and prints
the medians and their ratio. Exits 1 when the pruned model is not faster.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mcompress import config, pipeline

DEFAULT_MODEL = (
    Path(__file__).resolve().parents[2] / "shared" / "models" / "ppocr_mobile_v2_cls.onnx"
)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", default="1x3x48x192", help="input shape, NxCxHxW")
    args = parser.parse_args()
    if not args.model.is_file():
        print(f"model {args.model} not found; pass --model", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        pruned_path = Path(tmp) / "pruned.onnx"
        cfg = config.build(
            {
                "passes": [{"type": "prune", "structured": True, "sparsity": args.sparsity}],
                "validate": {"enabled": False},
            }
        )
        report = pipeline.run(cfg, pipeline.RunOptions(args.model, pruned_path))
        stats = report.passes[0].stats
        original, pruned = session(args.model, args.threads), session(pruned_path, args.threads)
        name = original.get_inputs()[0].name
        shape = [int(d) for d in args.shape.split("x")]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        times: dict[str, list[float]] = {"original": [], "pruned": []}
        for _ in range(20):
            original.run(None, {name: x})
            pruned.run(None, {name: x})
        for _ in range(args.runs):
            for label, sess in (("original", original), ("pruned", pruned)):
                start = time.perf_counter()
                sess.run(None, {name: x})
                times[label].append(time.perf_counter() - start)
    medians = {label: float(np.median(t)) * 1e3 for label, t in times.items()}
    fastest = {label: float(np.percentile(t, 10)) * 1e3 for label, t in times.items()}
    ratio = medians["pruned"] / medians["original"]
    assert report.output is not None
    print(f"model        {args.model.name}, input {args.shape}, {args.threads} thread(s)")
    print(f"structured   sparsity {args.sparsity}, {stats['groups']['pruned']} groups pruned")
    print(f"parameters   {report.input.parameters:,} -> {report.output.parameters:,}")
    print(f"MACs (est.)  {stats['macs_before']:,} -> {stats['macs_after']:,}")
    print(f"latency      original {medians['original']:.3f} ms, pruned {medians['pruned']:.3f} ms")
    print(f"ratio        {ratio:.3f} (pruned / original, median of {args.runs} runs each)")
    print(
        f"10th pct     original {fastest['original']:.3f} ms, pruned {fastest['pruned']:.3f} ms, "
        f"ratio {fastest['pruned'] / fastest['original']:.3f}"
    )
    return 0 if ratio < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
