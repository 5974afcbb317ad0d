"""Latency and peak memory of an original and a compressed model, measured side by side:
the validation report's `latency` and `memory` figures."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mcompress import latency_stats, model_io, processes, runtime
from mcompress.errors import GateError, McompressError, ModelError
from mcompress.inputs import InputSet
from mcompress.session_pair import SessionPair

WARMUP_RUNS = 3
# Samples stacked into one batch for the second latency measurement, with --data.
DATA_BATCH = 32
# Both models' memory is measured at once (two processes side by side) when their files and
# external data together are at most this large; larger ones one after the other.
SIDE_BY_SIDE_BYTES = 256 * 2**20


def latency(
    sessions: SessionPair,
    feed: dict[str, np.ndarray],
    runs: int,
    tick: Callable[[int], None] = lambda i: None,
) -> dict[str, Any]:
    """Median and p90 milliseconds of `runs` runs of one feed, the models interleaved (unless
    one session is held at a time: then one model after the other)."""
    feeds = [runtime.typed_feed(session, feed) for session in sessions]
    times: list[list[float]] = [[], []]
    # Alternate which model runs first: the second of a pair shares the CPU with the first
    # one's thread pool winding down, a bias that made identical files look slower.
    rounds: list[tuple[int, ...]] = [(1, 0) if i % 2 else (0, 1) for i in range(-WARMUP_RUNS, runs)]
    if sessions.alone:
        rounds = [(k,) for k in sessions.order() for _ in range(WARMUP_RUNS + runs)]
    for i, order in enumerate(rounds):
        for which in order:
            start = time.perf_counter()
            sessions[which].run(None, feeds[which])
            if i % (WARMUP_RUNS + runs) >= WARMUP_RUNS:
                times[which].append((time.perf_counter() - start) * 1000)
        tick((len(times[0]) + len(times[1])) // 2)
    stats = [
        {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90))} for t in times
    ]
    return {
        "input_shapes": {k: list(v.shape) for k, v in feed.items()},
        "warmup_runs": WARMUP_RUNS,
        "runs": runs,
        "original": stats[0],
        "compressed": stats[1],
        **latency_stats.compare(times[0], times[1]),
    }


def batch_latency(
    sessions: SessionPair, feeds: list[dict[str, np.ndarray]], runs: int, notes: list[str]
) -> dict[str, Any] | None:
    """Latency with up to DATA_BATCH data samples stacked on the batch axis, when every input
    has a dynamic first dimension and each feed holds one sample; else None."""
    inputs = sessions[0].get_inputs()
    if len(feeds) < 2 or any(not i.shape or isinstance(i.shape[0], int) for i in inputs):
        return None
    if any(v.ndim == 0 or v.shape[0] != 1 for v in feeds[0].values()):
        return None
    chosen = feeds[:DATA_BATCH]
    batch = {name: np.concatenate([f[name] for f in chosen]) for name in chosen[0]}
    try:
        return latency(sessions, batch, runs)
    except Exception as exc:  # noqa: BLE001 - a model may accept only batch 1
        notes.append(f"no latency at batch {len(chosen)}: {runtime.error_line(exc)}")
        return None


MEMORY_SCRIPT = """
import json, os, sys
import numpy as np
import onnxruntime as ort

LINUX = os.path.exists("/proc/self/clear_refs")

def vm(key):
    if not LINUX:
        return 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

names = json.loads(sys.argv[3])
npz = np.load(sys.argv[2], allow_pickle=False)
feed = {name: npz[f"arr_{i}"] for i, name in enumerate(names)}
ort.set_default_logger_severity(4)
options = ort.SessionOptions()
options.log_severity_level = 4
if LINUX:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
before = vm("VmRSS")
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
types = {"tensor(float16)": np.float16, "tensor(float)": np.float32}
for i in session.get_inputs():
    feed[i.name] = feed[i.name].astype(types.get(i.type, feed[i.name].dtype))
session.run(None, feed)
print(json.dumps(vm("VmHWM") - before if LINUX else None))
"""


def memory(original: Path, compressed: Path, inputs: InputSet) -> dict[str, Any] | None:
    """Peak resident memory added by loading and running each model once, measured in a fresh
    process (Linux peak-RSS counters; None elsewhere or when a model fails there).

    Run before any session of this process: onnxruntime can crash outright (segfault) on a
    graph it mis-optimizes, and that must end in a clear error, not take mcompress down.
    """
    with tempfile.TemporaryDirectory() as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, *inputs.feeds[0].values())
        names = json.dumps(list(inputs.feeds[0]))
        roles = ((original, "original"), (compressed, "compressed"))
        side_by_side = sum(_bytes_on_disk(path) for path, _ in roles) <= SIDE_BY_SIDE_BYTES
        children: list[subprocess.Popen[str]] = []
        try:
            for path, _ in roles:
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-c", MEMORY_SCRIPT, str(path), str(feed_path), names],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                        preexec_fn=processes.killed_with_parent(),
                    )
                )
                if not side_by_side and children[-1].wait(timeout=600) < 0:
                    break  # one JSON line fits the pipe; a crash is reported without the other
            done = [(child.communicate(timeout=600)[0], child.returncode) for child in children]
        except (subprocess.SubprocessError, OSError):
            for child in children:
                child.kill()
            return None
        peaks = []
        for (path, role), (stdout, returncode) in zip(roles, done, strict=False):
            if returncode < 0:
                raise _crashed(path, role, -returncode)
            try:
                peaks.append(json.loads(stdout.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                return None
    if None in peaks:
        return None
    peaks = [max(int(p), 0) for p in peaks]
    return {
        "method": "peak RSS growth of a fresh process loading and running the model once",
        "original_peak_bytes": peaks[0],
        "compressed_peak_bytes": peaks[1],
        "ratio": peaks[1] / peaks[0] if peaks[0] else None,
    }


def _bytes_on_disk(path: Path) -> int:
    """A model file's bytes with its external data; a file too large to measure side by side
    is not parsed for its external data."""
    size = path.stat().st_size
    if size > SIDE_BY_SIDE_BYTES:
        return size
    try:
        return model_io.disk_size(path)
    except Exception:  # unreadable: the measurement itself says what is wrong with the file
        return size


def _crashed(path: Path, role: str, signal_number: int) -> McompressError:
    """The error for onnxruntime dying on a model (the compressed one is written by then)."""
    try:
        name = signal.Signals(signal_number).name
    except ValueError:
        name = f"signal {signal_number}"
    message = f"onnxruntime crashed ({name}) loading and running the {role} model '{path}'"
    if role == "original":
        return ModelError(message, "the model cannot be validated with this onnxruntime")
    return GateError(
        message + "; it is written but unusable with default session options",
        "keep the nodes involved in float32 with exclude or block_nodes, or try another pass",
    )
