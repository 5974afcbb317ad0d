"""Fault test (issue 12, "What it must show"): SIGINT, SIGTERM and SIGKILL land at many points
of a `quantize` of a 200 MB model (external data) and of a `batch --jobs 2` over 4 models. After
each: the files that existed before are byte-identical, every output is absent or complete (it
loads and runs, giving the uninterrupted run's results), no temporary file is left after SIGINT
or SIGTERM, and no process of the run outlives it (its workers and child processes included).

The points are fractions of the measured duration of an uninterrupted run, so that the signals
land during start-up, loading, the passes, the save, validation and the final claim.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mcompress.outputs import STAGING_PREFIX
from tests import builders
from tests.conftest import REPO

# (signal, fraction of the uninterrupted run's duration): interleaved so that each signal
# lands early, in the middle and late.
QUANTIZE_POINTS = [
    (signal.SIGINT, 0.15),
    (signal.SIGKILL, 0.3),
    (signal.SIGTERM, 0.45),
    (signal.SIGINT, 0.6),
    (signal.SIGKILL, 0.75),
    (signal.SIGTERM, 0.9),
]
BATCH_POINTS = [
    (signal.SIGTERM, 0.2),
    (signal.SIGKILL, 0.35),
    (signal.SIGINT, 0.55),
    (signal.SIGKILL, 0.75),
    (signal.SIGTERM, 0.9),
]
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
MARK = "MCOMPRESS_FAULT_TEST"
WORKERS_GONE_SECONDS = 8.0


class Run:
    """One command run with its own environment mark, to find every process it started."""

    def __init__(self, args: list[str], temp: Path) -> None:
        self.mark = uuid.uuid4().hex
        env = dict(os.environ, TMPDIR=str(temp), PYTHONPATH=str(REPO), **{MARK: self.mark})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mcompress", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def processes(self) -> list[int]:
        """Live processes carrying this run's mark (the command, its workers, their children)."""
        needle = f"{MARK}={self.mark}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in environ.split(b"\0") and state != "Z":
                found.append(int(entry))
        return found

    def signal_at(self, sig: signal.Signals, seconds: float) -> tuple[int | None, str]:
        """Send `sig` `seconds` after the start (unless it ended), then wait for the end."""
        delay = self.started + seconds - time.monotonic()
        try:
            self.proc.wait(timeout=max(delay, 0.0))
        except subprocess.TimeoutExpired:
            self.proc.send_signal(sig)
        _, stderr = self.proc.communicate(timeout=120)
        return self.proc.returncode, stderr

    def wait_until_no_process(self) -> list[int]:
        """The processes of this run still alive `WORKERS_GONE_SECONDS` after its end."""
        deadline = time.monotonic() + WORKERS_GONE_SECONDS
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left


def _hashes(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _big_model(folder: Path) -> Path:
    """A 200 MB MatMul model whose weights are in `big.onnx.data` (written without a proto
    copy in memory: building it with onnx.save would take 10 s)."""
    rows, cols = 7000, 7168
    weights = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * 0.02
    weights.tofile(folder / "big.onnx.data")
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[rows, cols])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", "big.onnx.data"),
        ("offset", "0"),
        ("length", str(weights.nbytes)),
    ):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _outputs_of(model: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    onnx.load(str(model))  # the proto and its external data load with onnx too
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _temp_files(folder: Path, killed: set[int]) -> list[str]:
    """Temporary files and folders in `folder` that are not a private folder of a killed run
    (removed by the next run), nor the session id file `.ses` importing onnxruntime writes."""
    pattern = re.compile(rf"^{re.escape(STAGING_PREFIX)}[0-9a-f]+-(\d+)-")
    left = []
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if path.name != ".ses" and not (match and int(match[1]) in killed):
            left.append(path.name)
    return sorted(left)


def _check_quantize_output(
    out: Path, report: Path, expected: list[np.ndarray], feed: dict[str, np.ndarray]
) -> bool:
    """True when the run wrote its outputs (then complete: same results as the reference run);
    False when it wrote none. Anything in between fails."""
    data = out.with_name(out.name + ".data")
    present = [p.exists() for p in (out, data, report)]
    assert present in ([True] * 3, [False] * 3), f"partial output: {present}"
    if not present[0]:
        return False
    for got, want in zip(_outputs_of(out, feed), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert json.loads(report.read_text(encoding="utf-8"))["output"]["path"] == str(out)
    return True


@pytest.mark.slow
def test_signals_at_any_point_of_a_200mb_quantize_lose_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    temp = tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    model = _big_model(work)
    (work / "notes.txt").write_text("not mcompress's", encoding="utf-8")
    inputs = [model, work / "big.onnx.data", work / "notes.txt"]
    before = _hashes(inputs)
    feed = {"x": np.random.default_rng(1).standard_normal((2, 7000), dtype=np.float32)}

    reference = Run(["quantize", str(model), "-o", str(work / "ref.onnx")], temp)
    code, stderr = reference.signal_at(signal.SIGINT, 600)
    assert code == 0, stderr
    duration = time.monotonic() - reference.started
    expected = _outputs_of(work / "ref.onnx", feed)
    kept = {path.name for path in inputs} | {"ref.onnx", "ref.onnx.data"}

    finished: set[str] = set()
    killed: set[int] = set()
    for k, (sig, fraction) in enumerate(QUANTIZE_POINTS):
        out, report = work / f"run{k}.onnx", work / f"run{k}.json"
        run = Run(["quantize", str(model), "-o", str(out), "--report", str(report)], temp)
        code, stderr = run.signal_at(sig, duration * fraction)
        where = f"{sig.name} at {fraction:.0%} of {duration:.1f}s: exit {code} {stderr!r}"
        assert run.wait_until_no_process() == [], where
        assert _hashes(inputs) == before, where
        if _check_quantize_output(out, report, expected, feed):
            finished |= {out.name, out.name + ".data", report.name}
        if code == -signal.SIGKILL:
            killed.add(run.proc.pid)
        else:
            assert code in (0, EXIT_CODES.get(sig)), where
            # exit 0 means a complete output; a signal after the claim (while the summary
            # prints) exits 143 with the output complete, which is allowed: absent or complete.
            assert code != 0 or out.name in finished, where
            if code:
                assert stderr == f"mcompress: interrupted ({sig.name})\n", where
        assert _temp_files(temp, killed) == [], where
        assert _temp_files(work, killed) == sorted(kept | finished), where
    assert len(finished) < 3 * len(QUANTIZE_POINTS)  # some signal landed before the end

    # the next run removes what the killed ones left (staging folders, spilled tensors)
    final = Run(["quantize", str(model), "-o", str(work / "final.onnx")], temp)
    assert final.signal_at(signal.SIGINT, 600)[0] == 0
    assert _temp_files(temp, set()) == []
    assert _temp_files(work, set()) == sorted(kept | finished | {"final.onnx", "final.onnx.data"})
    assert _hashes(inputs) == before


def _batch_models(folder: Path) -> list[Path]:
    folder.mkdir()
    return [
        builders.save(builders.mlp(hidden=768, inputs=768, seed=i), folder / f"m{i}.onnx")
        for i in range(4)
    ]


def _check_batch_outputs(out: Path, models: list[Path], feed: dict[str, np.ndarray]) -> set[str]:
    """The models whose outputs are there: each complete (model runs like its input does, its
    report names it); nothing of the others. Returns their names."""
    done = set()
    for model in models:
        out_model, report = out / f"{model.stem}.q.onnx", out / f"{model.stem}.report.json"
        assert out_model.exists() == report.exists(), f"partial output of {model.name}"
        if out_model.exists():
            got, want = _outputs_of(out_model, feed)[0], builders.run(model, feed)[0]
            assert np.abs(got - want).max() < 0.05
            assert json.loads(report.read_text(encoding="utf-8"))["output"]["path"] == str(
                out_model
            )
            done.add(model.stem)
    return done


@pytest.mark.slow
def test_signals_at_any_point_of_a_batch_lose_nothing_and_leave_no_worker(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    models = _batch_models(tmp_path / "in")
    cfg = tmp_path / "q.yaml"
    cfg.write_text("passes:\n  - {type: quantize}\n", encoding="utf-8")
    inputs = [*models, cfg]
    before = _hashes(inputs)
    feed = {"x": np.random.default_rng(1).standard_normal((2, 768), dtype=np.float32)}

    def batch(out: Path) -> Run:
        out.mkdir()
        (out / "notes.txt").write_text("not mcompress's", encoding="utf-8")
        args = ["batch", str(tmp_path / "in"), "-c", str(cfg), "-o", str(out), "--jobs", "2"]
        return Run(args, temp)

    reference = batch(tmp_path / "ref")
    code, stderr = reference.signal_at(signal.SIGINT, 600)
    assert code == 0, stderr
    duration = time.monotonic() - reference.started

    killed: set[int] = set()
    pymp: set[str] = set()
    for k, (sig, fraction) in enumerate(BATCH_POINTS):
        out = tmp_path / f"out{k}"
        run = batch(out)
        code, stderr = run.signal_at(sig, duration * fraction)
        where = f"{sig.name} at {fraction:.0%} of {duration:.1f}s: exit {code} {stderr!r}"
        assert run.wait_until_no_process() == [], where
        assert _hashes(inputs) == before, where
        assert (out / "notes.txt").read_text(encoding="utf-8") == "not mcompress's"
        done = _check_batch_outputs(out, models, feed)
        names = {f"{n}.{kind}" for n in done for kind in ("q.onnx", "report.json")}
        # A signal during start-up (imports, planning) stops the batch before it has a summary.
        summarised = code == 0 or "summary written" in stderr
        names |= {"notes.txt", "summary.json"} if summarised else {"notes.txt"}
        assert summarised or code == -signal.SIGKILL or not done, where
        # workers remove their staging folders, even when their parent was killed
        assert _temp_files(out, set()) == sorted(names), where
        if code == -signal.SIGKILL:
            killed.add(run.proc.pid)
            # multiprocessing's own temp folder (the fork server's socket) of the killed batch
            pymp |= {name for name in _temp_files(temp, killed) if name.startswith("pymp-")}
            continue
        assert code in (0, EXIT_CODES.get(sig)), where
        if summarised:
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            # A model whose worker claimed its outputs in the instant the batch was stopped is
            # complete on disk but may miss its summary row (its result never reached the
            # parent): every row the summary counts is on disk, complete.
            assert {r["name"] for r in summary["models"] if r["status"] == "ok"} <= done, where
            assert summary["exit_code"] == code, where
        assert _temp_files(temp, killed) == sorted(pymp), where
