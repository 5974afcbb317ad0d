"""`distill` after lossy compression without recovery, per case, in one run: accuracy before and
after, the pass's held-out agreement and KL, seconds.

    python benchmarks/bench_distill.py [--models DIR]

Each case compresses the shared text-direction classifier with recovery off (`--no-recover`),
then runs `mcompress distill ORIGINAL COMPRESSED --calibration ppocr_cls_calib.npz` (128
labelled crops, a quarter held out inside the pass) and validates both on ppocr_cls_val.npz
(400 other crops); the last two cases are one `run` of a YAML pipeline ending in `type:
distill`, against the same pipeline without it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ("prune -s 0.7", ["prune", "-s", "0.7"]),
    ("prune -s 0.5", ["prune", "-s", "0.5"]),
    ("prune -s 0.3 --structured", ["prune", "-s", "0.3", "--structured"]),
    ("cluster -k 8", ["cluster", "-k", "8"]),
    ("quantize --bits 4", ["quantize", "--bits", "4"]),
]
PIPELINE = "passes:\n  - {type: prune, sparsity: 0.7, recover: false}\n  - {type: distill}\n"
# prune, then int8 (weights as Cast/Mul of int8 codes), then distill re-fitting on the int8 grid
QUANTIZED = (
    "passes:\n  - {type: prune, sparsity: 0.5, recover: false}\n"
    "  - {type: quantize, recover: false}\n  - {type: distill, layers: 4}\n"
)


def mcompress(args: list[str]) -> tuple[dict, float]:
    """(JSON report, wall seconds) of one command; gates off, so every case reports."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mcompress", *args, "--json", "--force", "--no-gates"],
        capture_output=True,
        text=True,
    )
    if not proc.stdout.strip():
        raise SystemExit(f"mcompress {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout), time.perf_counter() - started


def accuracy(report: dict) -> float:
    return float(report["validation"]["task"]["compressed"]["accuracy"])


def row(name: str, before: dict, after: dict, wall: float) -> str:
    stats = next(p for p in after["passes"] if p["type"] == "distill")
    held = stats["stats"]
    return (
        f"| `{name}` | {accuracy(before):.4f} | {accuracy(after):.4f} | "
        f"{held['before']['top1']:.3f} -> {held['after']['top1']:.3f} | "
        f"{held['before']['kl']:.3f} -> {held['after']['kl']:.3f}{undone(held)} | "
        f"{stats['seconds']:.1f} s ({wall:.0f} s wall) |"
    )


def undone(held: dict) -> str:
    """What the fit gave when the pass undid it (held-out agreement or KL got worse)."""
    if not held["reverted"]:
        return ""
    gave = held["rejected"]
    return f" (fit gave {gave['top1']:.3f} / {gave['kl']:.3f}: undone)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path(__file__).parents[2] / "shared/models")
    args = parser.parse_args()
    model = str(args.models / "ppocr_mobile_v2_cls.onnx")
    data = ["--data", str(args.models / "ppocr_cls_val.npz")]
    calib = ["--calibration", str(args.models / "ppocr_cls_calib.npz")]
    print("| compressed with recovery off | accuracy | after distill | held-out top-1 "
          "agreement | held-out KL | distill |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in CASES:
            student = str(Path(tmp) / "student.onnx")
            before, _ = mcompress([command[0], model, *command[1:], "--no-recover", "-o", student,
                                   *data])  # fmt: skip
            out = str(Path(tmp) / "distilled.onnx")
            after, wall = mcompress(["distill", model, student, *calib, *data, "-o", out])
            print(row(name, before, after, wall), flush=True)
        pipelines = [("run: prune 0.7 + distill", PIPELINE),
                     ("run: prune 0.5 + int8 + distill (layers: 4)", QUANTIZED)]  # fmt: skip
        for name, pipeline in pipelines:
            config, plain = Path(tmp) / "with.yaml", Path(tmp) / "without.yaml"
            config.write_text(pipeline)
            plain.write_text(pipeline[: pipeline.index("  - {type: distill")])
            out = str(Path(tmp) / "p.onnx")
            before, _ = mcompress(["run", model, "-c", str(plain), "-o", out, *data])
            after, wall = mcompress(["run", model, "-c", str(config), *calib, "-o", out, *data])
            print(row(name, before, after, wall), flush=True)


if __name__ == "__main__":
    main()
