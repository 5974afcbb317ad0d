"""One command for every benchmark: mcompress's passes against the reference tools, same run.

    python benchmarks/run.py [--quick] [--big | --only-big] [--passes quantize fp16 prune cluster]

For each model and pass, `mcompress PASS MODEL --no-validate` and the reference tool
(benchmarks/reference.py: quantize_dynamic, onnxruntime's float16 converter, numpy magnitude
pruning, numpy Lloyd k-means) each run in a child process; printed: wall time, peak RSS (the
child's own, from wait4), output size as % of the input, batch-1 latency as a ratio of the
input model's (all three models measured in one child, interleaved, median of rounds), and
mcompress / reference ratios of each (lower is better for all).

Models (generated in a temporary folder, never committed): a MiniLM-L6-sized encoder (91 MB;
2 layers with --quick), the shared classifier and VAD when ../shared/models exists, and with
--big a 2.55 GB MLP with external data (38 x 64 MB; latency not measured there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "models"
PASSES = {
    "quantize": ["quantize"],
    "fp16": ["fp16"],
    "prune": ["prune", "--sparsity", "0.5"],
    "cluster": ["cluster", "--clusters", "256"],
}


@dataclass
class Run:
    seconds: float
    peak_bytes: int
    ok: bool
    size: int = 0


def measure(cmd: list[str], out: Path) -> Run:
    """Wall time and peak RSS of one child process (its own maximum, from wait4)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    ok = os.waitstatus_to_exitcode(status) == 0 and out.exists()
    if not ok and child.stderr is not None:
        print(f"    FAILED: {' '.join(cmd[2:5])}: {child.stderr.read().decode()[-300:]}")
    size = sum(p.stat().st_size for p in out.parent.glob(out.name + "*")) if ok else 0
    return Run(seconds, usage.ru_maxrss * 1024, ok, size)


def latencies(paths: list[Path], rounds: int) -> list[float]:
    """Median batch-1 latency (ms) of each model, measured in one child process."""
    cmd = [sys.executable, str(HERE / "run.py"), "--latency", *map(str, paths)]
    cmd += ["--rounds", str(rounds)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        print(f"    latency FAILED: {result.stderr[-300:]}")
        return [float("nan")] * len(paths)
    return list(json.loads(result.stdout.splitlines()[-1]))


def _latency_child(paths: list[str], rounds: int) -> None:
    import numpy as np
    import onnxruntime as ort

    from mcompress.inputs import make_feeds

    feeds = make_feeds(Path(paths[0]), data=None, samples=1, seed=0, input_shapes={}).feeds[0]
    sessions = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in paths]
    times: list[list[float]] = [[] for _ in paths]
    for session in sessions:
        for _ in range(3):
            session.run(None, feeds)
    for _ in range(rounds):
        for session, found in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, feeds)
            found.append(time.perf_counter() - start)
    print(json.dumps([1e3 * float(np.median(t)) for t in times]))


def bench(name: str, src: Path, kinds: list[str], work: Path, rounds: int, timed: bool) -> None:
    size_in = sum(p.stat().st_size for p in src.parent.glob(src.name + "*"))
    print(f"\n{name}: {size_in / 1e6:.1f} MB")
    print(
        f"  {'pass':9s} {'tool':10s} {'seconds':>8s} {'peak RSS':>9s} {'size':>7s} "
        f"{'latency':>8s}   mcompress/reference: time  RSS   size  latency"
    )
    for kind in kinds:
        ours, theirs = work / f"{name}.{kind}.mc.onnx", work / f"{name}.{kind}.ref.onnx"
        mc_cmd = [sys.executable, "-m", "mcompress", *PASSES[kind], str(src), "-o", str(ours)]
        mc = measure([*mc_cmd, "--no-validate", "--force"], ours)
        ref_cmd = [sys.executable, str(HERE / "reference.py"), kind, str(src), str(theirs)]
        ref = measure(ref_cmd, theirs)
        lat = [float("nan")] * 3
        if timed and mc.ok and ref.ok:
            lat = latencies([src, ours, theirs], rounds)
        rows = (("mcompress", mc, lat[1] / lat[0]), ("reference", ref, lat[2] / lat[0]))
        for label, run, latency in rows:
            ratio = ""
            if label == "reference" and mc.ok and ref.ok:
                ratio = f"   {'':20s}{mc.seconds / ref.seconds:5.2f}x "
                ratio += f"{mc.peak_bytes / ref.peak_bytes:5.2f}x {mc.size / ref.size:5.2f}x "
                ratio += f"{lat[1] / lat[2]:5.2f}x"
            print(
                f"  {kind if label == 'mcompress' else '':9s} {label:10s} {run.seconds:8.2f} "
                f"{run.peak_bytes / 2**20:7.0f}MB {100 * run.size / size_in:6.1f}% "
                f"{latency:7.2f}x{ratio}"
            )
        for path in (ours, theirs):
            for file in path.parent.glob(path.name + "*"):
                file.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-layer encoder, 10 latency rounds")
    parser.add_argument("--big", action="store_true", help="also the 2.55 GB external-data MLP")
    parser.add_argument("--only-big", action="store_true", help="only the 2.55 GB MLP")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES))
    parser.add_argument("--latency", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=0, help="latency runs per model")
    args = parser.parse_args()
    rounds = args.rounds or (10 if args.quick else 30)
    if args.latency:
        _latency_child(args.latency, rounds)
        return
    with tempfile.TemporaryDirectory(prefix="mcompress-bench-") as tmp:
        work = Path(tmp)
        if not args.only_big:
            layers = 2 if args.quick else 6
            found = [
                ("encoder", generate(work / "encoder.onnx", f"encoder(path, layers={layers})")),
                *[(p.stem, p) for p in (SHARED / "ppocr_mobile_v2_cls.onnx",) if p.is_file()],
                *[(p.stem, p) for p in (SHARED / "silero_vad_op18_ifless.onnx",) if p.is_file()],
            ]
            for name, src in found:
                bench(name, src, args.passes, work, rounds, timed=True)
        if args.big or args.only_big:
            src = generate(work / "mlp.onnx", "big_mlp(path)")
            bench("mlp-2.5GB", src, args.passes, work, rounds, timed=False)


def generate(path: Path, call: str) -> Path:
    """Build a model of benchmarks/models.py in a child process: this process stays small, so
    the peak RSS children inherit from it at fork stays far below what they measure."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); from pathlib import Path; "
    code += f"from models import *; path = Path({str(path)!r}); {call}"
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


if __name__ == "__main__":
    main()
