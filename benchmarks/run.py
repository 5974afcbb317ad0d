"""One command for every benchmark: mcompress's passes against the reference tools, same run.

    python benchmarks/run.py [--quick] [--big | --only-big] [--passes quantize quantize4 ...]
                             [--models encoder transformer classifier vad]

For each model and pass, `mcompress PASS MODEL --no-validate` and the reference tool
(benchmarks/reference.py: quantize_dynamic, onnxruntime's MatMulNBits quantizer, onnxruntime's
float16 converter, numpy magnitude pruning, numpy Lloyd k-means) each run in a child process;
printed: wall time, CPU time and peak RSS (the child's own, from wait4), output size as % of
the input, batch-1 latency as a ratio of the input model's (all three models measured in one
child, interleaved, median of rounds), the relative L2 error of the output against the input
model's (median over 8 random inputs), the peak RSS of an onnxruntime session created for the output
(default options, as a user's program makes it: its own child per model) as a ratio of the
input model's, and mcompress / reference ratios of each (lower is better for all). The
reference tools do not validate, so mcompress runs with --no-validate there; a third row,
`validated`, times the command as a user types it (validation on: both models run on the
same inputs, latency and memory, each model served by its own process), with its time, CPU
and RSS as ratios of the reference's; a fourth, `overhead`, is what validation adds (validated
minus --no-validate, wall and CPU seconds) beside what a user's own check costs: both models
loaded in onnxruntime and run once on the same input.

Models (never committed): a generated MiniLM-L6-sized encoder (91 MB; 2 layers with --quick),
the PyTorch-exported transformer of benchmarks/export_transformer.py when its file exists
(--transformer), the shared classifier and VAD when ../shared/models exists, and with --big a
generated 2.55 GB MLP with external data (38 x 64 MB; latency not measured there, the load peak
of each output printed in MB beside the input's). --no-reference runs mcompress alone.
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
# Written by `python benchmarks/export_transformer.py --large` (needs torch): a trained
# BERT-style encoder exported by PyTorch, the graph a user's model has.
TRANSFORMER = Path.home() / ".cache" / "mcompress-bench" / "transformer_large.onnx"
PASSES = {
    "quantize": ["quantize"],
    "quantize4": ["quantize", "--bits", "4"],
    "fp16": ["fp16"],
    "prune": ["prune", "--sparsity", "0.5"],
    "cluster": ["cluster", "--clusters", "256"],
}
ERROR_SAMPLES = 8


@dataclass
class Run:
    seconds: float
    cpu_seconds: float  # user + system: steadier than wall time on a shared machine
    peak_bytes: int
    ok: bool
    size: int = 0


def child_env() -> dict[str, str]:
    """The children's environment: this checkout first on the path, and bytecode caching on
    (an installed mcompress has its .pyc files, as numpy and onnx do; with
    PYTHONDONTWRITEBYTECODE set, every run compiled ~90 modules again: 0.8 s of CPU)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def measure(cmd: list[str], out: Path) -> Run:
    """Wall time and peak RSS of one child process (its own maximum, from wait4)."""
    env = child_env()
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    ok = os.waitstatus_to_exitcode(status) == 0 and out.exists()
    if not ok and child.stderr is not None:
        print(f"    FAILED: {' '.join(cmd[2:5])}: {child.stderr.read().decode()[-300:]}")
    size = sum(p.stat().st_size for p in out.parent.glob(out.name + "*")) if ok else 0
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, cpu, usage.ru_maxrss * 1024, ok, size)


def latencies(paths: list[Path], rounds: int) -> tuple[list[float], list[float]]:
    """Median batch-1 latency (ms) of each model, and the relative L2 error of its outputs
    against the first model's on the same random input, measured in one child process."""
    cmd = [sys.executable, str(HERE / "run.py"), "--latency", *map(str, paths)]
    cmd += ["--rounds", str(rounds)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    if result.returncode:
        print(f"    latency FAILED: {result.stderr[-300:]}")
        return [float("nan")] * len(paths), [float("nan")] * len(paths)
    found = json.loads(result.stdout.splitlines()[-1])
    return found["ms"], found["error"]


def load_peak(path: Path) -> int:
    """Peak RSS (bytes) of a child that only creates a default onnxruntime session for `path`:
    what loading the model costs a user, constant folding of packed weights included."""
    code = "import onnxruntime as ort, sys; ort.set_default_logger_severity(3); "
    code += "ort.InferenceSession(sys.argv[1])"
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], env=child_env())
    _, status, usage = os.wait4(child.pid, 0)
    return usage.ru_maxrss * 1024 if os.waitstatus_to_exitcode(status) == 0 else 0


def _latency_child(paths: list[str], rounds: int) -> None:
    """Each round runs every model once, starting with a different one each time (the model
    run right after another shares the CPU with its winding-down thread pool); idle threads
    sleep instead of spinning, as in mcompress's own validation. The error is the median over
    ERROR_SAMPLES random inputs: on one, a model with saturated gates (the VAD's LSTM on
    N(0, 1) audio) gives 0 or a whole gate flip (0.34), whichever tool compressed it."""
    import numpy as np

    from mcompress import runtime
    from mcompress.inputs import make_feeds

    all_feeds = make_feeds(
        Path(paths[0]), data=None, samples=ERROR_SAMPLES, seed=0, input_shapes={}
    ).feeds
    sessions = [runtime.session(p, spinning=False) for p in paths]
    typed = [runtime.typed_feed(s, all_feeds[0]) for s in sessions]
    times: list[list[float]] = [[] for _ in paths]
    for round_ in range(-3, rounds):
        for k in np.roll(np.arange(len(paths)), round_):
            start = time.perf_counter()
            sessions[k].run(None, typed[k])
            if round_ >= 0:
                times[k].append(time.perf_counter() - start)
    per_sample = []
    for feeds in all_feeds:
        outputs = [
            np.concatenate([np.ravel(o) for o in s.run(None, runtime.typed_feed(s, feeds))])
            for s in sessions
        ]
        base = outputs[0].astype(np.float64)
        scale = float(np.linalg.norm(base)) or 1.0
        per_sample.append([float(np.linalg.norm(o - base)) / scale for o in outputs])
    errors = [float(e) for e in np.median(per_sample, axis=0)]
    print(json.dumps({"ms": [1e3 * float(np.median(t)) for t in times], "error": errors}))


HEADER = (
    f"  {'pass':9s} {'tool':10s} {'seconds':>8s} {'cpu s':>7s} {'peak RSS':>9s} {'size':>7s} "
    f"{'latency':>8s} {'error':>7s} {'load':>6s}   mcompress/reference: time   cpu   RSS  size "
    "latency error  load"
)


def bench(
    name: str, src: Path, kinds: list[str], work: Path, rounds: int, timed: bool, reference: bool
) -> None:
    size_in = sum(p.stat().st_size for p in src.parent.glob(src.name + "*"))
    print(f"\n{name}: {size_in / 1e6:.1f} MB")
    print(HEADER)
    src_load = float("nan")
    for kind in kinds:
        ours, theirs = work / f"{name}.{kind}.mc.onnx", work / f"{name}.{kind}.ref.onnx"
        mc_cmd = [sys.executable, "-m", "mcompress", *PASSES[kind], str(src), "-o", str(ours)]
        mc = measure([*mc_cmd, "--no-validate", "--force"], ours)
        ref = Run(float("nan"), float("nan"), 0, False)
        if reference:
            ref = measure(
                [sys.executable, str(HERE / "reference.py"), kind, str(src), str(theirs)], theirs
            )
        lat, err = [float("nan")] * 3, [float("nan")] * 3
        load = [float("nan")] * 3
        if timed and mc.ok and ref.ok:
            lat, err = latencies([src, ours, theirs], rounds)
            load = [float(load_peak(path)) for path in (src, ours, theirs)]
        elif mc.ok and not timed:
            # No latency on the big model; the load peak of its input is measured once.
            if src_load != src_load:
                src_load = float(load_peak(src))
            load = [src_load, float(load_peak(ours)), float("nan")]
        rows = (("mcompress", mc), ("reference", ref)) if reference else (("mcompress", mc),)
        for k, (label, run) in enumerate(rows, start=1):
            print(
                f"  {kind if k == 1 else '':9s} {label:10s} {run.seconds:8.2f} "
                f"{run.cpu_seconds:7.2f} {run.peak_bytes / 2**20:7.0f}MB "
                f"{100 * run.size / size_in:6.1f}% {lat[k] / lat[0]:7.2f}x {err[k]:7.4f} "
                f"{load[k] / load[0]:5.2f}x"
                + (_ratios(mc, ref, lat, err, load) if k == 2 and mc.ok and ref.ok else "")
            )
        if not timed and mc.ok:
            print(
                f"  {'':9s} load peak: input {load[0] / 2**20:.0f} MB, "
                f"output {load[1] / 2**20:.0f} MB"
            )
        if timed and ref.ok:
            full = measure([*mc_cmd, "--force"], ours)
            _print_validated(full, ref, size_in)
            if full.ok:
                _print_overhead(full, mc, user_check(src, ours, work))
        for path in (ours, theirs):
            for file in path.parent.glob(path.name + "*"):
                file.unlink()


def _print_validated(full: Run, ref: Run, size_in: int) -> None:
    """The row of mcompress's default command (validation on), against the reference; one
    whose output failed a gate (exit 3, printed as FAILED above the row) did all its work."""
    ratios = (
        f"   {'':20s}{full.seconds / ref.seconds:5.2f}x {full.cpu_seconds / ref.cpu_seconds:5.2f}x "
        f"{full.peak_bytes / ref.peak_bytes:5.2f}x"
    )
    print(
        f"  {'':9s} {'validated':10s} {full.seconds:8.2f} {full.cpu_seconds:7.2f} "
        f"{full.peak_bytes / 2**20:7.0f}MB {100 * full.size / size_in:6.1f}% {'':25s}" + ratios
    )


USER_CHECK = """
import sys, numpy as np, onnxruntime as ort
data = np.load(sys.argv[3])
for path in sys.argv[1:3]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    session.run(None, {i.name: data[i.name] for i in session.get_inputs()})
"""


def user_check(src: Path, ours: Path, work: Path) -> Run:
    """What a user checks by hand instead of validating: both models loaded in onnxruntime
    (default options) and run once on the same input (made here, not timed), in a child."""
    code = "import sys, numpy as np; from mcompress.inputs import make_feeds; "
    code += "feed = make_feeds(sys.argv[1], data=None, samples=1, seed=0, input_shapes={}); "
    code += "np.savez(sys.argv[2], **feed.feeds[0])"
    feed = work / "feed.npz"
    subprocess.run([sys.executable, "-c", code, str(src), str(feed)], check=True, env=child_env())
    return measure([sys.executable, "-c", USER_CHECK, str(src), str(ours), str(feed)], ours)


def _print_overhead(full: Run, bare: Run, check: Run) -> None:
    """Validation's cost: the default command minus the same command with --no-validate, and
    a user's own check (`user_check`), in wall and CPU seconds."""
    print(
        f"  {'':9s} {'overhead':10s} {full.seconds - bare.seconds:8.2f} "
        f"{full.cpu_seconds - bare.cpu_seconds:7.2f}   validated - no-validate; a user's "
        f"check (both models loaded, run once): {check.seconds:.2f} s, {check.cpu_seconds:.2f} "
        f"s CPU, {check.peak_bytes / 2**20:.0f} MB"
    )


def _ratios(mc: Run, ref: Run, lat: list[float], err: list[float], load: list[float]) -> str:
    """mcompress / reference for each figure; no error ratio when the reference output is
    within float rounding of the input model's (it left the model's weights as they were)."""
    error = f"{err[1] / err[2]:5.2f}x" if err[2] > 1e-5 else "    -"
    return (
        f"   {'':20s}{mc.seconds / ref.seconds:5.2f}x {mc.cpu_seconds / ref.cpu_seconds:5.2f}x "
        f"{mc.peak_bytes / ref.peak_bytes:5.2f}x {mc.size / ref.size:5.2f}x "
        f"{lat[1] / lat[2]:5.2f}x {error} {load[1] / load[2]:5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-layer encoder, 10 latency rounds")
    parser.add_argument("--big", action="store_true", help="also the 2.55 GB external-data MLP")
    parser.add_argument("--only-big", action="store_true", help="only the 2.55 GB MLP")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES))
    parser.add_argument("--latency", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=0, help="latency runs per model")
    parser.add_argument(
        "--transformer",
        type=Path,
        default=TRANSFORMER,
        help="exported transformer (if present)",
    )
    parser.add_argument("--models", nargs="+", help="only these models (names as printed)")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="mcompress only (the references take an hour on the big MLP: Lloyd, quantize_dynamic)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (10 if args.quick else 30)
    if args.latency:
        _latency_child(args.latency, rounds)
        return
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "mcompress")], check=True)
    with tempfile.TemporaryDirectory(prefix="mcompress-bench-") as tmp:
        work = Path(tmp)
        if not args.only_big:
            layers = 2 if args.quick else 6
            found = [
                ("encoder", work / "encoder.onnx"),
                ("transformer", args.transformer),
                ("classifier", SHARED / "ppocr_mobile_v2_cls.onnx"),
                ("vad", SHARED / "silero_vad_op18_ifless.onnx"),
            ]
            for name, src in found:
                if args.models and name not in args.models:
                    continue
                if name == "encoder":
                    generate(src, f"encoder(path, layers={layers})")
                if src.is_file():
                    bench(name, src, args.passes, work, rounds, True, not args.no_reference)
        if args.big or args.only_big:
            src = generate(work / "mlp.onnx", "big_mlp(path)")
            bench("mlp-2.5GB", src, args.passes, work, rounds, False, not args.no_reference)


def generate(path: Path, call: str) -> Path:
    """Build a model of benchmarks/models.py in a child process: this process stays small, so
    the peak RSS children inherit from it at fork stays far below what they measure."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); from pathlib import Path; "
    code += f"from models import *; path = Path({str(path)!r}); {call}"
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


if __name__ == "__main__":
    main()
