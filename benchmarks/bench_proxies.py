"""Every command, as a new user types it, on the proxies of the held-out real models; one row
per (proxy, command): exit code, last error line, wall seconds, peak RSS, size and fidelity.

    python benchmarks/export_proxies.py          # once: det, rec, rec_attn, vad (torch)
    python benchmarks/export_transformer.py --large   # once: the MiniLM-sized encoder
    python benchmarks/bench_proxies.py [--only det rec ...] [--commands quantize fp16 ...]

Each command runs in its own process (`python -m mcompress` from this checkout) with `--json`;
peak RSS is measured by GNU time (`/usr/bin/time`). Fidelity is judged twice: mcompress's own
figure from its JSON (random inputs unless the command was given data), and the task figure
this script measures on the proxy's `_val.npz` against the original's outputs: pixels of the
probability map agreeing at 0.5 as IoU (det), lines decoded identically (rec), speech decisions
agreeing (vad), top-1 agreement (transformer). A row's verdict flags what issue 14/15 call defects:
`CRASH` (exit 1 or a traceback), `FALSE ALARM` (quantize/fp16 exit 3 while the task figure is
>= 0.95), `SILENT BREAK` (exit 0, task figure < 0.8), `RSS` (> 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "mcompress-bench"
PROXIES = ["det", "rec", "rec_attn", "vad", "transformer_large"]
# label -> arguments after the model path; {c}: calibration .npz, {v}: validation .npz
COMMANDS: dict[str, list[str]] = {
    "quantize": ["quantize"],
    "quantize static": ["quantize", "--mode", "static", "--calibration", "{c}"],
    "quantize --bits 4": ["quantize", "--bits", "4"],
    "quantize --per-tensor": ["quantize", "--per-tensor"],
    "quantize +calib": ["quantize", "--calibration", "{c}"],
    "fp16": ["fp16"],
    "prune 0.5": ["prune", "--sparsity", "0.5"],
    "prune 0.5 +calib": ["prune", "--sparsity", "0.5", "--calibration", "{c}"],
    "prune struct 0.3": ["prune", "--structured", "--sparsity", "0.3"],
    "prune struct 0.3 +calib": [
        "prune",
        "--structured",
        "--sparsity",
        "0.3",
        "--calibration",
        "{c}",
    ],
    "cluster 16": ["cluster", "--clusters", "16"],
    "cluster 16 +calib": ["cluster", "--clusters", "16", "--calibration", "{c}"],
    **{f"run {lv}": ["run", "-c", lv] for lv in ("level1", "level2", "level3", "max-compression")},
    **{
        f"run {lv} +calib": ["run", "-c", lv, "--calibration", "{c}"]
        for lv in ("level1", "level2", "level3", "max-compression")
    },
    "tune 60s": ["tune", "--time-budget", "60s", "--calibration", "{c}"],
    "doctor": ["doctor"],
    "distill": ["distill", "{pruned}", "--calibration", "{c}"],
}
NO_OUTPUT = {"doctor"}


@dataclass
class Row:
    proxy: str
    command: str
    exit: int
    seconds: float
    rss_mb: float
    size: float | None
    own: str
    task: float | None
    error: str
    verdict: str


def files(proxy: str, folder: Path = CACHE) -> tuple[Path, Path, Path]:
    model, calib, val = (folder / f"{proxy}{s}" for s in (".onnx", "_calib.npz", "_val.npz"))
    return model, calib, val


def feeds_of(proxy: str, session: ort.InferenceSession, val: dict) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    if proxy == "vad":
        n = len(val["input"])
        return {"input": val["input"], "state": np.zeros((2, n, 128), np.float32),
                "sr": np.array(16000, np.int64)}  # fmt: skip
    return {k: val[k] for k in names}


def run_model(path: Path, proxy: str, val: dict) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds_of(proxy, session, val))[0]


def agreement(proxy: str, original: np.ndarray, compressed: np.ndarray) -> float:
    """The task figure against the original's outputs (1.0 = same decisions)."""
    if proxy == "det":
        a, b = original > 0.5, compressed > 0.5
        union = (a | b).sum()
        return float((a & b).sum() / union) if union else 1.0
    if proxy.startswith("rec"):
        return float(
            np.mean([x == y for x, y in zip(lines(original), lines(compressed), strict=False)])
        )
    if proxy == "vad":
        return float(np.mean((original > 0.5) == (compressed > 0.5)))
    return float(np.mean(original.argmax(-1) == compressed.argmax(-1)))


def lines(probs: np.ndarray) -> list[tuple[int, ...]]:
    best = probs.argmax(-1)
    return [tuple(row[np.r_[True, row[1:] != row[:-1]] & (row != 0)]) for row in best]


def run_command(argv: list[str], timeout: float) -> tuple[int, float, float, str, str]:
    """Exit code, wall seconds, peak RSS MB, stdout, stderr of one mcompress process. Peak RSS
    is GNU time's: a child forked from this (large) process would report our peak as its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "rss"
        started = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M", "-o", str(rss), *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # GNU time and mcompress under it
            out, err = proc.communicate()
            code, err = -9, f"{err}\ntimed out after {timeout:.0f} s"
        seconds = time.perf_counter() - started
        lines = rss.read_text().split() if rss.exists() else []
        peak = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
    return code, seconds, peak, out, err


def own_figure(report: dict) -> str:
    overall = (report.get("validation") or {}).get("overall") or {}
    parts = []
    if overall.get("sqnr_db") is not None:
        parts.append(f"{overall['sqnr_db']:.1f} dB")
    if overall.get("top1_agreement") is not None:
        parts.append(f"top1 {overall['top1_agreement']:.2f}")
    return ", ".join(parts)


def last_error(stdout: str, stderr: str) -> str:
    text = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    text = [ln for ln in text if "warning" not in ln.lower()] or text
    return text[-1][:120] if text else ""


def verdict(label: str, code: int, task: float | None, rss: float, stderr: str) -> str:
    flags = []
    if code not in (0, 3) or "Traceback" in stderr:
        flags.append("CRASH")
    if code == 3 and label in ("quantize", "fp16") and task is not None and task >= 0.95:
        flags.append("FALSE ALARM")
    if code == 0 and task is not None and task < 0.8:
        flags.append("SILENT BREAK")
    if rss > 1024:
        flags.append("RSS")
    return " ".join(flags) or "ok"


def bench(proxy: str, folder: Path, labels: list[str], work: Path, timeout: float) -> list[Row]:
    model, calib, val_path = files(proxy, folder)
    val = dict(np.load(val_path))
    reference = run_model(model, proxy, val)
    rows = []
    for label in labels:
        out = work / f"{proxy}.{label.replace(' ', '_').replace('-', '')}.onnx"
        pruned = work / f"{proxy}.prune_0.5.onnx"
        args = [a.format(c=calib, v=val_path, pruned=pruned) for a in COMMANDS[label]]
        argv = [sys.executable, "-m", "mcompress", args[0], str(model), *args[1:]]
        if label not in NO_OUTPUT:
            argv += ["-o", str(out), "--force", "--json"]
        code, seconds, rss, stdout, stderr = run_command(argv, timeout)
        size, task, figure = None, None, ""
        if label not in NO_OUTPUT and out.exists():
            data = out.with_name(out.name + ".data")
            size = (out.stat().st_size + (data.stat().st_size if data.exists() else 0)) / (
                model.stat().st_size
                + sum(p.stat().st_size for p in model.parent.glob(model.name + ".data"))
            )
            try:
                task = agreement(proxy, reference, run_model(out, proxy, val))
            except Exception as exc:  # a written model onnxruntime cannot run is a defect too
                stderr += f"\nTraceback: output does not run: {exc}"
            try:
                figure = own_figure(json.loads(stdout))
            except json.JSONDecodeError:
                figure = "no json"
        error = last_error(stdout, stderr) if code else ""
        row = Row(proxy, label, code, seconds, rss, size, figure, task, error,
                  verdict(label, code, task, rss, stderr))  # fmt: skip
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


HEADER = (
    "| proxy | command | exit | s | peak MB | size | mcompress fidelity | task agreement "
    "| verdict | error |"
)


def format_row(r: Row) -> str:
    size = f"{100 * r.size:.1f}%" if r.size is not None else "-"
    task = f"{r.task:.3f}" if r.task is not None else "-"
    return (f"| {r.proxy} | `{r.command}` | {r.exit} | {r.seconds:.1f} | {r.rss_mb:.0f} | {size} | "
            f"{r.own or '-'} | {task} | {r.verdict} | {r.error.replace('|', '/')} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=PROXIES)
    parser.add_argument("--commands", nargs="*", default=list(COMMANDS), help="labels to run")
    parser.add_argument("--dir", type=Path, default=CACHE, help="where the proxies are")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    opts = parser.parse_args()
    missing = [p for p in opts.only if not files(p, opts.dir)[0].exists()]
    if missing:
        sys.exit(f"missing proxies {missing} in {opts.dir}: run benchmarks/export_proxies.py "
                 "(and export_transformer.py --large)")  # fmt: skip
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_proxies.") as work:
        for proxy in opts.only:
            rows += bench(proxy, opts.dir, opts.commands, Path(work), opts.timeout)
    if opts.json:
        opts.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    bad = [r for r in rows if r.verdict != "ok"]
    print(f"\n{len(rows)} runs, {len(bad)} flagged")


if __name__ == "__main__":
    main()
