"""Recovery on vs off, per pass and model, in one run: fidelity, seconds and peak memory.

    python benchmarks/bench_recover.py [--models DIR] [--transformers DIR] [--large] [--quick]
                                       [--encoder-only] [--large-only] [--only TEXT ...]

Each row runs `mcompress` in a child process twice, with `--calibration` (recovery on) and with
`--no-recover` (the same data, recovery off), and reads the JSON report; wall seconds include
calibration and validation, CPU seconds are the child's user + sys and peak RSS its maximum
resident set (os.wait4), so rows measured on a loaded machine can be told apart from slow code.
The load average is printed before and after the table. Models and data come from
../shared/models (see its README): the PaddleOCR text-direction classifier, calibrated on 128
labelled crops and validated on 400 others; and, when `benchmarks/export_transformer.py` has
written them (default ~/.cache/mcompress-bench), the BERT-style encoders, calibrated on 128
sequences and compared on 256 others by the relative L2 error of their outputs (the "on" cell
adds the ratio on/off: the issue's targets are <= 0.5x for pruning, <= 0.7x for 4-bit).
(The Silero VAD keeps its layers inside `If` branches, which recovery does not reach; the
summary names them.)
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

CLASSIFIER = [
    ("prune -s 0.5", ["prune", "-s", "0.5"]),
    ("prune -s 0.7", ["prune", "-s", "0.7"]),
    ("prune -s 0.3 --structured", ["prune", "-s", "0.3", "--structured"]),
    ("cluster -k 16", ["cluster", "-k", "16"]),
    ("quantize (int8, GPTQ)", ["quantize"]),
    ("quantize --per-tensor (GPTQ)", ["quantize", "--per-tensor"]),
    ("quantize --bits 4 (GPTQ)", ["quantize", "--bits", "4"]),
    ("run -c max-compression", ["run", "-c", "max-compression"]),
    ("run -c level2", ["run", "-c", "level2"]),
    ("run -c level3", ["run", "-c", "level3"]),
]
# With `--exclude Gather` the embedding tables stay float in both arms: how close the default
# (tables held at 8 bits under recovery, mcompress.recover.tables) comes to keeping them whole.
TRANSFORMER = [
    ("prune -s 0.5", ["prune", "-s", "0.5"]),
    ("prune -s 0.5 --exclude Gather", ["prune", "-s", "0.5", "--exclude", "Gather"]),
    ("quantize --bits 4 (GPTQ)", ["quantize", "--bits", "4"]),
    ("quantize --bits 4 --exclude Gather", ["quantize", "--bits", "4", "--exclude", "Gather"]),
    ("cluster -k 16", ["cluster", "-k", "16"]),
]

# The row labels the README's table uses.
NAMES = {"ppocr_mobile_v2_cls": "classifier", "transformer": "encoder 13 MB",
         "transformer_large": "encoder 90 MB"}  # fmt: skip


@dataclass
class Run:
    """One mcompress child process: its JSON report, exit code and what it cost."""

    report: dict
    code: int
    wall: float
    cpu: float
    rss_mb: float


def run(args: list[str]) -> Run:
    """Run one mcompress command in a child process (a failed gate, exit 3, still reports)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcompress", *args, "--json", "--force"], stdout=out, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        text = out.read()
        if not text.strip():
            raise SystemExit(f"mcompress {' '.join(args)} failed: {err.read().strip()}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(json.loads(text), os.waitstatus_to_exitcode(status), seconds, cpu,
               usage.ru_maxrss / 1024)  # fmt: skip


def error(report: dict) -> float:
    """The outputs' relative L2 error against the original on the validation data."""
    overall = (report.get("validation") or {}).get("overall") or {}
    return float(overall.get("relative_l2_error", float("nan")))


def metric(done: Run, accuracy: bool, baseline: Run | None = None) -> str:
    """Task accuracy (labelled classifier crops), else the outputs' relative L2 error (with its
    ratio to `baseline`'s and the task accuracy when the data has labels); a nonzero exit."""
    task = ((done.report.get("validation") or {}).get("task") or {}).get("compressed")
    if accuracy and task:
        cell = f"acc {task['accuracy']:.4f}"
    else:
        cell = f"rel. L2 {error(done.report):.4f}"
        if baseline is not None:
            cell += f" ({error(done.report) / error(baseline.report):.2f}x)"
        if task:
            cell += f", acc {task['accuracy']:.3f}"
    return cell + (f", exit {done.code}" if done.code else "")


def rows(label: str, model: Path, args: list[str], data: list[str], tmp: str) -> str:
    """One table row: the command with recovery off and on."""
    runs = {}
    for flag in ("--no-recover", "--recover"):
        out = Path(tmp) / f"out{flag}.onnx"
        runs[flag] = run([*args[:1], str(model), *args[1:], *data, flag, "-o", str(out)])
    off, on = runs["--no-recover"], runs["--recover"]
    size = on.report["output"]["size_bytes"] / on.report["input"]["size_bytes"]
    accuracy = "transformer" not in model.stem  # the encoder is judged by its output error
    name = NAMES.get(model.stem, model.stem)
    cells = [f"{name}: `{label}`", metric(off, accuracy), metric(on, accuracy, off),
             f"{size:.1%}", f"{off.wall:.1f} / {on.wall:.1f}", f"{off.cpu:.1f} / {on.cpu:.1f}",
             f"{off.rss_mb:.0f} / {on.rss_mb:.0f} MB"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def load() -> str:
    return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "models"
    )
    parser.add_argument(
        "--transformers", type=Path, default=Path.home() / ".cache" / "mcompress-bench"
    )
    parser.add_argument("--quick", action="store_true", help="prune 0.5 only")
    parser.add_argument("--encoder-only", action="store_true", help="skip the classifier")
    parser.add_argument("--large", action="store_true", help="also the ~90 MB encoder (slow)")
    parser.add_argument("--large-only", action="store_true", help="the ~90 MB encoder alone")
    parser.add_argument("--only", nargs="+", default=[], help="rows whose command contains TEXT")
    opts = parser.parse_args()
    models = opts.models.resolve()
    only_large = opts.large_only
    plan = [] if opts.encoder_only or only_large else [
        (models / "ppocr_mobile_v2_cls.onnx", "ppocr_cls_calib.npz", "ppocr_cls_val.npz",
         CLASSIFIER)]  # fmt: skip
    names = ("transformer", "transformer_large") if opts.large else ("transformer",)
    for name in ("transformer_large",) if only_large else names:
        if (opts.transformers / f"{name}.onnx").exists():
            plan.append((opts.transformers / f"{name}.onnx", f"{name}_calib.npz",
                         f"{name}_val.npz", TRANSFORMER))  # fmt: skip
    print(load(), flush=True)
    print("| model: command | recovery off | recovery on | size on | wall s off / on |"
          " CPU s off / on | peak RSS off / on |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model, calib, val, cases in plan:
            data = ["--calibration", str(model.parent / calib), "--data", str(model.parent / val)]
            for label, args in cases[:1] if opts.quick else cases:
                if opts.only and not any(text in label for text in opts.only):
                    continue
                print(rows(label, model, args, data, tmp), flush=True)
    print(load())


if __name__ == "__main__":
    main()
