"""One model served by a child process for validation: the child loads the model in
onnxruntime, runs feeds on request, times each run and measures its own peak memory.

Validation's sessions live in these children instead of mcompress's own process: the peak
memory of loading and running each model once is measured in the process that runs it (no
second load just to measure it), mcompress's own peak RSS stays its baseline however much
onnxruntime needs to load a packed model, and a crash of onnxruntime on a graph it
mis-optimizes kills a child, which mcompress reports as a one-line error.

The child imports `runtime` (numpy, onnx, onnxruntime) and nothing else of mcompress; its
memory is measured from just before the session is created.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mcompress.session_pair import NodeInfo

# Python code that runs `main` in the child with this checkout's mcompress on its path.
BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from mcompress.model_server import main; main()"
)
_ROOT = str(Path(__file__).resolve().parent.parent)


class ServedSession:
    """A model in a child process, used like an onnxruntime session (`get_inputs`,
    `get_outputs`, `run`) plus `timed_run` (milliseconds measured in the child) and `peak`
    (bytes of peak RSS growth from loading the model to the end of its first run; None
    before that run or where the counters are missing). The child starts at once (its
    imports overlap the caller's work) and loads the model when first asked, after `wait()`
    returned when given (so two models' load peaks need not add up).
    A model that does not load is a ModelError; a child that dies (onnxruntime crashing) is
    the error `crash_error` gives."""

    def __init__(self, path: Path, role: str, wait: Callable[[], Any] | None = None) -> None:
        from mcompress import processes

        self.path, self.role = path, role
        self._child = subprocess.Popen(
            [sys.executable, "-c", BOOT, _ROOT, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=processes.killed_with_parent(),
        )
        self._described: tuple[list[NodeInfo], list[NodeInfo]] | None = None
        self.peak: int | None = None
        self.last_ms: float | None = None  # of the last run
        self._wait = wait

    def _send(self, request: Any) -> None:
        assert self._child.stdin is not None
        try:
            pickle.dump(request, self._child.stdin, pickle.HIGHEST_PROTOCOL)
            self._child.stdin.flush()
        except OSError:
            raise self._died() from None

    def _answer(self) -> Any:
        """The child's next answer; its error message raised as RuntimeError."""
        assert self._child.stdout is not None
        try:
            kind, value = pickle.load(self._child.stdout)
        except (EOFError, pickle.UnpicklingError):
            raise self._died() from None
        if kind == "error":
            raise RuntimeError(value)
        return value

    def _died(self) -> Exception:
        from mcompress.errors import ModelError

        code = self._child.wait()
        if code < 0:
            return crash_error(self.path, self.role, -code)
        return ModelError(f"the process running the {self.role} model exited with code {code}")

    def _described_io(self) -> tuple[list[NodeInfo], list[NodeInfo]]:
        """Wait for the model to load (after `wait`, when given): its inputs and outputs."""
        if self._described is None:
            if self._wait is not None:
                self._wait()
            self._send("load")
            try:
                inputs, outputs = self._answer()
            except RuntimeError as exc:
                from mcompress.errors import ModelError
                from mcompress.runtime import error_line

                raise ModelError(
                    f"{self.role} model '{self.path}' does not load in onnxruntime: "
                    f"{error_line(exc)}"
                ) from None
            self._described = [NodeInfo(*a) for a in inputs], [NodeInfo(*a) for a in outputs]
        return self._described

    def get_inputs(self) -> list[NodeInfo]:
        return self._described_io()[0]

    def get_outputs(self) -> list[NodeInfo]:
        return self._described_io()[1]

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs `names` (all when None) of one run; onnxruntime's error as
        RuntimeError."""
        outputs, _ = self._run(names, feed, True)
        return outputs

    def timed_run(self, feed: dict[str, np.ndarray]) -> float:
        """Milliseconds of one run of `feed`, measured in the child (no transfer counted)."""
        return self._run(None, feed, False)[1]

    def _run(
        self, names: list[str] | None, feed: dict[str, np.ndarray], keep: bool
    ) -> tuple[Any, float]:
        self._described_io()
        self._send((names, feed, keep))
        outputs, ms, peak = self._answer()
        if self.peak is None:
            self.peak = peak
        self.last_ms = ms
        return outputs, ms

    def alive(self) -> bool:
        return self._child.poll() is None

    def close(self) -> None:
        """End the child at once: it holds no file of ours, and its orderly exit (onnxruntime
        tearing its session down) took 0.2 s."""
        self._child.kill()
        self._child.wait()
        for pipe in (self._child.stdin, self._child.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


def crash_error(path: Path, role: str, signal_number: int) -> Exception:
    """The error for onnxruntime dying on a model (the compressed one is written by then)."""
    from mcompress.errors import GateError, ModelError

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


# ---------------------------------------------------------------- the child


def _vm(key: str) -> int | None:
    """A /proc/self/status figure in bytes (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS counter (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def _send(out: BinaryIO, kind: str, value: Any) -> None:
    pickle.dump((kind, value), out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def main() -> None:
    """Serve the model at argv[1]: once asked to load it, answer its (inputs, outputs), then
    one (outputs, ms, peak) per (names, feed, keep) request until stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing else may write into the answers
    requests = sys.stdin.buffer
    from mcompress import processes, runtime

    runtime.onnxruntime_module()  # imported before the memory baseline is taken
    try:
        pickle.load(requests)  # "load": the parent says when
    except EOFError:
        return
    measured = _reset_peak()
    before = _vm("VmRSS")
    try:
        # Idle worker threads sleep: spinning ones steal the CPU from the other model's process.
        session = runtime.session(sys.argv[1], spinning=False)
    except Exception as exc:  # noqa: BLE001 - any load failure goes back as its message
        _send(out, "error", str(exc))
        return
    processes.release_freed_memory()
    describe = [[(a.name, a.type, list(a.shape)) for a in args] for args in (
        session.get_inputs(), session.get_outputs())]  # fmt: skip
    _send(out, "ok", tuple(describe))
    peak: int | None = None
    while True:
        try:
            names, feed, keep = pickle.load(requests)
        except EOFError:
            return
        try:
            start = time.perf_counter()
            outputs = session.run(names, feed)
            ms = (time.perf_counter() - start) * 1000
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
            _send(out, "error", str(exc))
            continue
        if peak is None and measured and before is not None:
            peak = max((_vm("VmHWM") or 0) - before, 0)
        _send(out, "ok", (outputs if keep else None, ms, peak))
