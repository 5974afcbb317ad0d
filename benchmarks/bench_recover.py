"""Recovery on vs off, per pass and model, in one run: fidelity, seconds and peak memory.

    python benchmarks/bench_recover.py [--models DIR] [--transformers DIR] [--large] [--quick]
                                       [--encoder-only]

Each row runs `mcompress` in a child process twice, with `--calibration` (recovery on) and with
`--no-recover` (the same data, recovery off), and reads the JSON report; peak RSS is the child's
(os.wait4). Models and data come from ../shared/models (see its README): the PaddleOCR
text-direction classifier, calibrated on 128 labelled crops and validated on 400 others; and,
when `benchmarks/export_transformer.py` has written them (default ~/.cache/mcompress-bench),
the BERT-style encoder, calibrated on 128 sequences and compared on 256 others by the relative
L2 error of its outputs. (The Silero VAD keeps its layers inside `If` branches, which recovery
does not reach; the summary names them.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSIFIER = [
    ("prune -s 0.5", ["prune", "-s", "0.5"]),
    ("prune -s 0.7", ["prune", "-s", "0.7"]),
    ("prune -s 0.3 --structured", ["prune", "-s", "0.3", "--structured"]),
    ("cluster -k 16", ["cluster", "-k", "16"]),
    ("run -c max-compression", ["run", "-c", "max-compression"]),
    ("quantize --per-tensor (GPTQ)", ["quantize", "--per-tensor"]),
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


def run(args: list[str]) -> tuple[dict, float, float]:
    """(JSON report, wall seconds, peak RSS MB) of one mcompress command in a child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcompress", *args, "--json", "--force"], stdout=out, stderr=err
        )
        _, _, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        text = out.read()
        if not text.strip():
            raise SystemExit(f"mcompress {' '.join(args)} failed: {err.read().strip()}")
    return json.loads(text), seconds, usage.ru_maxrss / 1024


def metric(report: dict, accuracy: bool) -> str:
    """Task accuracy (labelled classifier crops), else the outputs' relative L2 error (and the
    task accuracy when the data has labels)."""
    validation = report.get("validation") or {}
    task = (validation.get("task") or {}).get("compressed")
    if accuracy and task:
        return f"acc {task['accuracy']:.4f}"
    overall = validation.get("overall") or {}
    error = f"rel. L2 {overall.get('relative_l2_error', float('nan')):.4f}"
    return f"{error} (acc {task['accuracy']:.3f})" if task else error


def rows(label: str, model: Path, args: list[str], data: list[str], tmp: str) -> str:
    """One table row: the command with recovery off and on."""
    runs = {}
    for flag in ("--no-recover", "--recover"):
        out = Path(tmp) / f"out{flag}.onnx"
        runs[flag] = run([*args[:1], str(model), *args[1:], *data, flag, "-o", str(out)])
    (off, s_off, m_off), (on, s_on, m_on) = runs["--no-recover"], runs["--recover"]
    size = on["output"]["size_bytes"] / on["input"]["size_bytes"]
    accuracy = "transformer" not in model.stem  # the encoder is judged by its output error
    cells = [f"{model.stem}: `{label}`", metric(off, accuracy), metric(on, accuracy), f"{size:.1%}",
             f"{s_off:.1f} / {s_on:.1f} s", f"{m_off:.0f} / {m_on:.0f} MB"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


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
    opts = parser.parse_args()
    models = opts.models.resolve()
    plan = [] if opts.encoder_only else [
        (models / "ppocr_mobile_v2_cls.onnx", "ppocr_cls_calib.npz", "ppocr_cls_val.npz",
         CLASSIFIER)]  # fmt: skip
    for name in ("transformer", "transformer_large") if opts.large else ("transformer",):
        if (opts.transformers / f"{name}.onnx").exists():
            plan.append((opts.transformers / f"{name}.onnx", f"{name}_calib.npz",
                         f"{name}_val.npz", TRANSFORMER))  # fmt: skip
    print("| model: command | recovery off | recovery on | size on | seconds off / on |"
          " peak RSS off / on |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model, calib, val, cases in plan:
            data = ["--calibration", str(model.parent / calib), "--data", str(model.parent / val)]
            for label, args in cases[:1] if opts.quick else cases:
                print(rows(label, model, args, data, tmp), flush=True)


if __name__ == "__main__":
    main()
