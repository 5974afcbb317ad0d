"""Generate the README's figure tables by running the commands they describe.

    python benchmarks/readme_figures.py            # print the tables
    python benchmarks/readme_figures.py --write    # replace them in README.md
    python benchmarks/readme_figures.py --check    # exit 1 when README.md differs

Each table sits between `<!-- figures:NAME:start -->` and `<!-- figures:NAME:end -->` in the
README, so a change that moves a figure updates the README in the same commit (and
tests/test_readme_figures.py fails until it does). Only deterministic figures are generated:
sizes, parameters and agreement on seeded inputs, never timings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SAMPLES = REPO / "sample_models"
SHARED = Path(os.environ.get("MCOMPRESS_SHARED_MODELS", REPO.parent / "shared" / "models"))
CLASSIFIER = SHARED / "ppocr_mobile_v2_cls.onnx"
VAD = SHARED / "silero_vad_op18_ifless.onnx"
CLASSIFIER_DATA = SHARED / "ppocr_cls_val.npz"
PRESET_MATRIX = ("level1", "level2", "level3", "max-compression")
FIXED_PRESETS = ("fp16", "int4-weight-only", "fixed-level2", "fixed-level3",
                 "fixed-max-compression")  # fmt: skip
REAL_ROWS = (
    ("quantize", ["quantize"], "level1"),
    ("fp16", ["fp16"], "fp16"),
    ("prune --sparsity 0.5", ["prune", "--sparsity", "0.5"], None),
    ("prune --sparsity 0.3 --structured", ["prune", "--sparsity", "0.3", "--structured"], None),
    ("cluster --clusters 16", ["cluster", "--clusters", "16"], None),
    ("cluster --clusters 256", ["cluster", "--clusters", "256"], None),
)


def mcompress(args: list[str], workdir: Path) -> dict[str, Any]:
    """One command's JSON report (a failed gate, exit 3, still reports)."""
    return run_json(args, workdir)[0]


def run_json(args: list[str], workdir: Path) -> tuple[dict[str, Any], int]:
    """One command's JSON report and exit code (0, or 3 for a failed gate)."""
    done = subprocess.run(
        [sys.executable, "-m", "mcompress", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=1800,
    )
    if done.returncode not in (0, 3) or not done.stdout.strip():
        raise SystemExit(f"mcompress {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout), done.returncode


def _kb(n: int) -> str:
    return f"{n / 1000:.1f} KB"


def _share(report: dict[str, Any]) -> str:
    return f"{100 * report['output']['size_bytes'] / report['input']['size_bytes']:.1f}%"


def _close_to_one(value: float) -> str:
    """5 significant digits, more when those would round a near-perfect figure to 1."""
    digits = 5
    while float(f"{value:.{digits}g}") == 1.0 and value != 1.0 and digits < 12:
        digits += 1
    return f"{value:.{digits}g}"


def _agreement(report: dict[str, Any]) -> str:
    overall = (report.get("validation") or {}).get("overall") or {}
    parts = []
    if overall.get("cosine") is not None:
        parts.append(f"cosine {_close_to_one(overall['cosine'])}")
    if overall.get("top1_agreement") is not None:
        parts.append(f"top-1 {overall['top1_agreement']:.0%}")
    return ", ".join(parts)


def _vad_cell(report: dict[str, Any]) -> str:
    speech = (report.get("validation") or {}).get("outputs", {}).get("output", {})
    error = speech.get("max_abs_error")
    return _share(report) + ("" if error is None else f", speech prob. max abs error {error:.1g}")


def presets_table(workdir: Path, only: tuple[str, ...] = PRESET_MATRIX) -> list[str]:
    """The budget presets (`only` those) on both shared models: random inputs, and the
    classifier's labelled data; size, what the search chose, the floor's figure, the exit."""
    cases = (
        ("classifier, random inputs", CLASSIFIER, []),
        ("classifier, `--data ppocr_cls_val.npz`", CLASSIFIER, ["--data", str(CLASSIFIER_DATA)]),
        ("Silero VAD, random inputs", VAD, []),
    )
    rows = []
    for name in only:
        cells = []
        for label, model, extra in cases:
            out = workdir / f"{model.stem}.{name}.{len(extra)}.onnx"
            started = time.perf_counter()
            report, code = run_json(
                ["run", str(model), "-c", name, "-o", str(out), *extra], workdir
            )
            # wall time is not a generated figure (it depends on the machine): stderr only
            print(f"{name}, {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
            cells.append(_preset_cell(report, code))
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    sizes = f"{_kb(CLASSIFIER.stat().st_size)}, {VAD.stat().st_size / 1e6:.1f} MB"
    header = [
        f"| preset (inputs: {sizes}) | " + " | ".join(label for label, _, _ in cases) + " |",
        "|---|---|---|---|",
    ]
    return header + rows


def fixed_presets_table(workdir: Path, only: tuple[str, ...] = FIXED_PRESETS) -> list[str]:
    """The fixed recipes (no search) in the same matrix: what a budget would have refused."""
    return presets_table(workdir, only)


def _preset_cell(report: dict[str, Any], code: int) -> str:
    """'150.2 KB (sparsity 0.1), top-1 99%, exit 0'."""
    chosen = ((report.get("search") or {}).get("chosen") or {}).get("label")
    figures = []
    for check in ((report.get("validation") or {}).get("floor") or {}).get("checks", []):
        if check["metric"] == "top1_agreement":
            figures.append(f"top-1 {check['value']:.1%}")
        else:
            figures.append(f"SQNR {check['value']:.1f} dB")
    task = (report.get("validation") or {}).get("task")
    if task:
        figures.append(f"accuracy {task['compressed']['accuracy']:.1%}")
    size = _kb(report["output"]["size_bytes"]) + (f" ({chosen})" if chosen else "")
    return ", ".join([size, *figures, f"exit {code}"])


def real_models_table(workdir: Path, only: tuple[str, ...] = ()) -> list[str]:
    """Each command (`only` those labels) with its defaults on the two shared models."""
    header = [
        f"| command | PaddleOCR text-direction classifier, {_kb(CLASSIFIER.stat().st_size)} | "
        f"Silero VAD, {VAD.stat().st_size / 1e6:.1f} MB | VAD after `strip` (preset) |",
        "|---|---|---|---|",
    ]
    rows = []
    for label, args, preset in REAL_ROWS:
        if only and label not in only:
            continue
        cells = []
        for model in (CLASSIFIER, VAD):
            if "--structured" in args and model == VAD:
                cells.append("-")
                continue
            out = workdir / f"{model.stem}.{'_'.join(args)}.onnx"
            report = mcompress([*args, str(model), "-o", str(out)], workdir)
            if model == VAD:
                cells.append(_vad_cell(report))
            else:
                cells.append(f"{_share(report)}, {_agreement(report)}")
        if preset:
            out = workdir / f"vad.{preset}.onnx"
            report = mcompress(["run", str(VAD), "-c", preset, "-o", str(out)], workdir)
            cells.append(f"{_share(report)} (`-c {preset}`)")
        else:
            cells.append("-")
        rows.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return header + rows


TABLES: dict[str, Callable[[Path], list[str]]] = {
    "presets": presets_table,
    "fixed-presets": fixed_presets_table,
    "real-models": real_models_table,
}


def marked(name: str) -> tuple[str, str]:
    return f"<!-- figures:{name}:start -->", f"<!-- figures:{name}:end -->"


def readme_table(text: str, name: str) -> list[str]:
    """The lines of table `name` as the README has them."""
    start, end = marked(name)
    return text.split(start, 1)[1].split(end, 1)[0].strip().splitlines()


def replace_table(text: str, name: str, lines: list[str]) -> str:
    start, end = marked(name)
    pattern = re.escape(start) + r".*?" + re.escape(end)
    block = "\n".join([start, *lines, end])
    return re.sub(pattern, lambda _: block, text, count=1, flags=re.DOTALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md differs")
    parser.add_argument("--only", choices=sorted(TABLES), help="one table")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.only] if args.only else list(TABLES):
            lines = TABLES[name](Path(tmp))
            print("\n".join(lines) + "\n")
            if readme_table(text, name) != lines:
                stale.append(name)
            text = replace_table(text, name, lines)
    if args.write:
        README.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"README.md figures out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
