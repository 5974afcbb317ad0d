"""Recovery on vs off, per pass and model, in one run: fidelity, seconds and peak memory.

    python benchmarks/bench_recover.py [--models DIR] [--quick]

Each row runs `mcompress` in a child process twice, with `--calibration` (recovery on) and with
`--no-recover` (the same data, recovery off), and reads the JSON report; peak RSS is the child's
(os.wait4). Models and data come from ../shared/models (see its README): the PaddleOCR
text-direction classifier, calibrated on 128 labelled crops and validated on 400 others. (The
Silero VAD keeps every layer inside `If` branches, which recovery does not reach yet.)
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

CASES = [
    ("prune -s 0.5", ["prune", "-s", "0.5"]),
    ("prune -s 0.7", ["prune", "-s", "0.7"]),
    ("prune -s 0.3 --structured", ["prune", "-s", "0.3", "--structured"]),
    ("cluster -k 16", ["cluster", "-k", "16"]),
    ("run -c max-compression", ["run", "-c", "max-compression"]),
    ("quantize --per-tensor (GPTQ)", ["quantize", "--per-tensor"]),
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


def metric(report: dict) -> str:
    task = (report.get("validation") or {}).get("task") or {}
    if task.get("compressed"):
        return f"acc {task['compressed']['accuracy']:.4f}"
    overall = (report.get("validation") or {}).get("overall") or {}
    return f"cos {overall.get('cosine', float('nan')):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "models"
    )
    parser.add_argument("--quick", action="store_true", help="prune 0.5 only")
    opts = parser.parse_args()
    models = opts.models.resolve()
    model = models / "ppocr_mobile_v2_cls.onnx"
    data = ["--calibration", str(models / "ppocr_cls_calib.npz")]
    data += ["--data", str(models / "ppocr_cls_val.npz")]
    print(
        "| command | recovery off | recovery on | size on | seconds off / on | peak RSS off / on |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, args in CASES[:1] if opts.quick else CASES:
            rows = {}
            for flag in ("--no-recover", "--recover"):
                out = Path(tmp) / f"out{flag}.onnx"
                rows[flag] = run([*args[:1], str(model), *args[1:], *data, flag, "-o", str(out)])
            (off, s_off, m_off), (on, s_on, m_on) = rows["--no-recover"], rows["--recover"]
            size = on["output"]["size_bytes"] / on["input"]["size_bytes"]
            cells = [f"`{label}`", metric(off), metric(on), f"{size:.1%}",
                     f"{s_off:.1f} / {s_on:.1f} s", f"{m_off:.0f} / {m_on:.0f} MB"]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
