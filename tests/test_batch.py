"""`mcompress batch`: discovery, naming, job sizing, per-model rows, exit codes, Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from mcompress import batch, batch_plan, config
from mcompress.cli import app
from mcompress.errors import UsageError
from tests import builders
from tests.conftest import SAMPLES, SHARED_MODELS

runner = CliRunner()
STRIP = "passes:\n  - {type: strip}\n"


def _mlp(path: Path, seed: int = 0, hidden: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return builders.save(builders.mlp(hidden=hidden, seed=seed), path)


def _strip_config(tmp_path: Path) -> Path:
    path = tmp_path / "strip.yaml"
    path.write_text(STRIP, encoding="utf-8")
    return path


def _summary(out_dir: Path) -> dict:
    return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- planning


def test_discover_files_folders_globs_and_duplicates(tmp_path: Path) -> None:
    a = _mlp(tmp_path / "a" / "m.onnx")
    b = _mlp(tmp_path / "a" / "deep" / "n.onnx")
    _mlp(tmp_path / "a" / ".hidden" / "skip.onnx")
    c = _mlp(tmp_path / "c" / "m.onnx")
    out = tmp_path / "a" / "out"
    _mlp(out / "m.level1.onnx")  # an earlier run's output inside the searched folder

    found = batch_plan.discover(
        [str(tmp_path / "a"), str(tmp_path / "c" / "*.onnx"), str(a)], skip_dir=out
    )

    assert found == [b, a, c]
    assert batch_plan.unique_names(found) == ["n", "m", "m-2"]


def test_unique_names_never_reuse_an_existing_stem() -> None:
    models = [Path("x/m.onnx"), Path("y/m.onnx"), Path("z/m-2.onnx")]
    assert batch_plan.unique_names(models) == ["m", "m-2", "m-2-2"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("missing.onnx", "is not a file, a folder or a glob pattern that matches"),
        ("empty", "contains no .onnx model files"),
        ("nothing*.onnx", "contains no .onnx model files"),
    ],
)
def test_discover_rejects_paths_without_models(tmp_path: Path, given: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=message):
        batch_plan.discover([str(tmp_path / given)])


def test_data_map_matches_names_and_globs_relative_to_its_file(tmp_path: Path) -> None:
    (tmp_path / "val.npz").write_bytes(b"")
    (tmp_path / "other.npz").write_bytes(b"")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("digits_*.onnx: val.npz\n'*/special.onnx': other.npz\n", encoding="utf-8")

    entries = batch_plan.load_data_map(mapping)

    assert batch_plan.data_for(Path("m/digits_cnn.onnx"), entries) == tmp_path / "val.npz"
    assert batch_plan.data_for(Path("m/special.onnx"), entries) == tmp_path / "other.npz"
    assert batch_plan.data_for(Path("m/vad.onnx"), entries) is None


def test_data_map_errors_name_the_problem(tmp_path: Path) -> None:
    mapping = tmp_path / "map.json"
    mapping.write_text('{"a.onnx": "missing.npz"}', encoding="utf-8")
    with pytest.raises(UsageError, match="data 'missing.npz' for 'a.onnx' does not exist"):
        batch_plan.load_data_map(mapping)
    mapping.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(UsageError, match="must map model names or globs to data files"):
        batch_plan.load_data_map(mapping)


def test_default_jobs_is_bounded_by_memory(tmp_path: Path, monkeypatch) -> None:
    models = [_mlp(tmp_path / f"m{i}.onnx", seed=i) for i in range(4)]
    per_job = batch_plan.MEMORY_PER_MODEL_BYTE * max(m.stat().st_size for m in models)
    per_job += batch_plan.WORKER_BASE_MEMORY
    monkeypatch.setattr(batch_plan.os, "cpu_count", lambda: 8)

    monkeypatch.setattr(batch_plan, "available_memory", lambda: 2 * per_job + 1)
    assert batch_plan.default_jobs(models, None) == 2
    monkeypatch.setattr(batch_plan, "available_memory", lambda: per_job // 2)
    assert batch_plan.default_jobs(models, None) == 1
    monkeypatch.setattr(batch_plan, "available_memory", lambda: None)
    assert batch_plan.default_jobs(models, None) == 4  # capped by the number of models
    assert batch_plan.default_jobs(models, 3) == 3
    assert batch_plan.available_memory() is None or batch_plan.available_memory() > 0


def test_plan_refuses_existing_outputs_and_applies_the_data_map(tmp_path: Path) -> None:
    model = _mlp(tmp_path / "in" / "m.onnx")
    data = tmp_path / "val.npz"
    data.write_bytes(b"")
    cfg = config.build({"passes": [{"type": "strip"}], "validate": {"samples": 4}})
    out = tmp_path / "out"
    out.mkdir()

    [job] = batch_plan.plan([model], cfg, out, "strip", data_map=[("m.onnx", data)])

    assert job.output == out / "m.strip.onnx" and job.report == out / "m.report.json"
    assert job.config["validate"] == {"samples": 4, "data": str(data)}
    job.output.write_bytes(b"old")
    with pytest.raises(UsageError, match="m.strip.onnx' already exists; pass --force"):
        batch_plan.plan([model], cfg, out, "strip")
    assert batch_plan.plan([model], cfg, out, "strip", force=True)[0].force


def test_exit_code_is_the_most_severe_row() -> None:
    def outcome(*codes: int) -> batch.Outcome:
        rows = [batch.Row(model="m", name="m", status="x", exit_code=c) for c in codes]
        return batch.Outcome(rows=rows, jobs=1, seconds=0)

    assert outcome(0, 0).exit_code == 0
    assert outcome(0, 3).exit_code == 3
    assert outcome(3, 2, 0).exit_code == 2
    assert outcome(2, 1, 3).exit_code == 1
    rows = outcome(0, 1).rows
    assert batch.Outcome(rows, 1, 0, interrupted=True).exit_code == 130
    assert batch.Outcome(rows, 1, 0, interrupted=True, signal_name="SIGTERM").exit_code == 143


def test_internal_error_in_a_model_is_row_exit_1_with_a_log(tmp_path: Path, monkeypatch) -> None:
    model = _mlp(tmp_path / "m.onnx")
    cfg = config.build({"passes": [{"type": "strip"}]})
    [job] = batch_plan.plan([model], cfg, tmp_path, "strip")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(batch.pipeline, "run", boom)
    monkeypatch.setattr(batch, "_events", queue.Queue())
    monkeypatch.setattr(batch, "_stop", threading.Event())

    row = batch.run_job(job)

    assert (row["status"], row["exit_code"]) == ("failed", 1)
    assert row["error"]["type"] == "RuntimeError" and row["error"]["message"] == "unexpected"
    assert "RuntimeError: unexpected" in Path(row["error"]["log"]).read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_worker_that_dies_fails_only_its_own_model(tmp_path: Path) -> None:
    models = [_mlp(tmp_path / "in" / f"m{i}.onnx", seed=i, hidden=256) for i in range(4)]
    out = tmp_path / "out"
    out.mkdir()
    cfg = config.build(
        {"passes": [{"type": "strip"}], "validate": {"samples": 300, "latency_runs": 300}}
    )
    jobs = batch_plan.plan(models, cfg, out, "strip")
    victim = jobs[1].index
    events: list[tuple[str, int]] = []

    def listener(kind: str, index: int, payload: object) -> None:
        events.append((kind, index))
        if kind == "start" and index == victim:  # every time it starts, as an OOM kill would
            os.kill(int(payload), signal.SIGKILL)  # type: ignore[call-overload]

    outcome = batch.run_batch(jobs, 2, listener)

    statuses = [(row.name, row.status, row.exit_code) for row in outcome.rows]
    assert statuses == [("m0", "ok", 0), ("m1", "failed", 1), ("m2", "ok", 0), ("m3", "ok", 0)]
    assert outcome.rows[1].error is not None and outcome.rows[1].error["type"] == "WorkerDied"
    assert outcome.exit_code == 1
    assert events.count(("start", victim)) >= 2  # retried alone before it was blamed
    assert not (out / "m1.strip.onnx").exists()
    assert {p.name for p in out.iterdir()} == {
        f"m{i}.{kind}" for i in (0, 2, 3) for kind in ("strip.onnx", "report.json")
    }


# ---------------------------------------------------------------- end to end


def test_batch_duplicate_stems_and_summary(tmp_path: Path) -> None:
    _mlp(tmp_path / "a" / "net.onnx", seed=1)
    _mlp(tmp_path / "b" / "net.onnx", seed=2, hidden=32)
    out = tmp_path / "out"

    result = runner.invoke(
        app,
        [
            "batch",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "-c",
            str(_strip_config(tmp_path)),
            "-o",
            str(out),
            "--jobs",
            "2",
            "--no-validate",
        ],
    )

    assert result.exit_code == 0, result.output
    rows = _summary(out)["models"]
    assert [(r["name"], r["status"]) for r in rows] == [("net", "ok"), ("net-2", "ok")]
    assert rows[0]["model"].endswith("a/net.onnx") and rows[1]["model"].endswith("b/net.onnx")
    # the two outputs are different models (hidden 64 vs 32), neither overwrote the other
    assert (out / "net.strip.onnx").stat().st_size > (out / "net-2.strip.onnx").stat().st_size
    assert {p.name for p in out.iterdir()} == {
        "net.strip.onnx",
        "net-2.strip.onnx",
        "net.report.json",
        "net-2.report.json",
        "summary.json",
    }
    assert "net-2" in result.output and "summary.json" in result.output


@pytest.mark.slow
def test_bad_data_fails_only_its_model_and_leaves_no_output(tmp_path: Path) -> None:
    _mlp(tmp_path / "in" / "good.onnx")
    _mlp(tmp_path / "in" / "bad.onnx", seed=1)
    np.savez(tmp_path / "wrong.npz", tokens=np.zeros((4, 32), np.float32))
    (tmp_path / "map.json").write_text('{"bad.onnx": "wrong.npz"}', encoding="utf-8")
    out = tmp_path / "out"

    result = runner.invoke(
        app,
        ["batch", str(tmp_path / "in"), "-c", str(_strip_config(tmp_path)), "-o", str(out)]
        + ["--data-map", str(tmp_path / "map.json"), "--samples", "4", "--json"],
    )

    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert summary == _summary(out)
    bad, good = summary["models"]
    assert (bad["name"], bad["status"], bad["exit_code"]) == ("bad", "failed", 2)
    assert (
        bad["error"]["type"] == "DataError" and "no array for input 'x'" in bad["error"]["message"]
    )
    assert (good["name"], good["status"]) == ("good", "ok")
    assert {p.name for p in out.iterdir()} == {
        "good.strip.onnx",
        "good.report.json",
        "summary.json",
    }


@pytest.mark.slow
def test_batch_level1_over_real_and_sample_models_with_a_corrupt_one(tmp_path: Path) -> None:
    """The issue's demonstration: every good model compressed, the corrupt one failed, exit 2."""
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not an onnx model")
    out = tmp_path / "out"
    # The bundled models only: the README's first command leaves sample_models/*.int8.onnx.
    samples = tmp_path / "samples"
    samples.mkdir()
    for model in SAMPLES.glob("*.onnx"):
        if model.name.count(".") == 1:
            shutil.copy(model, samples)
    paths = [str(samples), str(corrupt)]
    if SHARED_MODELS.is_dir():
        paths.insert(0, str(SHARED_MODELS))
    data_map = tmp_path / "data.yaml"
    data_map.write_text(f"'digits_*.onnx': {SAMPLES / 'digits_val.npz'}\n", encoding="utf-8")

    result = runner.invoke(
        app,
        [
            "batch",
            *paths,
            "--config",
            "level1",
            "--out-dir",
            str(out),
            "--jobs",
            "2",
            "--data-map",
            str(data_map),
            "--samples",
            "16",
        ],
    )

    assert result.exit_code == 2, result.output
    summary = _summary(out)
    rows = {Path(r["model"]).name: r for r in summary["models"]}
    expected = {p.name for p in samples.glob("*.onnx")} | {"corrupt.onnx"}
    if SHARED_MODELS.is_dir():
        expected |= {p.name for p in SHARED_MODELS.glob("*.onnx")}
    assert set(rows) == expected
    assert summary["exit_code"] == 2 and summary["counts"]["failed"] == 1
    bad = rows.pop("corrupt.onnx")
    assert (bad["status"], bad["exit_code"], bad["error"]["type"]) == ("failed", 2, "ModelError")
    assert "corrupt or truncated" in bad["error"]["message"]
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row)
        assert row["output_bytes"] < row["input_bytes"] / 2, (name, row)
        report = json.loads(Path(row["report"]).read_text(encoding="utf-8"))
        assert report["output"]["size_bytes"] == row["output_bytes"]
        session = ort.InferenceSession(row["output"], providers=["CPUExecutionProvider"])
        assert session.get_outputs()
        if name.startswith("digits_"):  # labelled data from the data map: the gate is enforced
            assert row["metric"]["name"] == "accuracy drop"
            assert [(g["name"], g["passed"]) for g in row["gates"]] == [
                ("max_accuracy_drop", True),
                ("min_top1_agreement", True),
            ]
        else:  # random inputs have no labels: level1's accuracy gate is skipped, with a note;
            # the fidelity floor still holds
            assert row["gates"] and all(g["passed"] for g in row["gates"]), row["gates"]
            assert {g["name"] for g in row["gates"]} <= {"min_sqnr", "min_top1_agreement"}
            assert any("gate max_accuracy_drop skipped" in n for n in report["notes"])
    assert "corrupt" in result.output and "failed (exit 2)" in result.output


def _wait_for(stream, text: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"never saw {text!r}: {lines}")


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_interrupt_stops_workers_and_leaves_no_partial_outputs(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    models = [_mlp(tmp_path / "in" / f"m{i}.onnx", seed=i, hidden=512) for i in range(4)]
    out = tmp_path / "out"
    out.mkdir()
    # files that existed before the run: an earlier report of every model (replaced only by a
    # model that finishes, --force) and unrelated files, which the run must never touch
    for i in range(4):
        (out / f"m{i}.report.json").write_text(f'{{"earlier": {i}}}', encoding="utf-8")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "m0.slow.onnx.data").write_bytes(b"\x01" * 1000)
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(
        "passes:\n  - {type: strip}\nvalidate: {samples: 2000, latency_runs: 2000}\n",
        encoding="utf-8",
    )
    before = _hashes(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcompress", "batch", str(tmp_path / "in"), "-c", str(cfg)]
        + ["-o", str(out), "--jobs", "2", "--force"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(proc.stderr, "[start]", timeout=120)
        time.sleep(0.5)
        proc.send_signal(signum)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - started < 15
    assert proc.returncode == code, stderr
    assert stderr.splitlines()[-1] == (
        f"mcompress: interrupted ({signum.name}); unfinished models were removed, summary written"
    )
    summary = _summary(out)
    assert summary["interrupted"] is True and summary["exit_code"] == code
    rows = summary["models"]
    assert len(rows) == len(models) and any(r["status"] == "interrupted" for r in rows)
    assert {r["exit_code"] for r in rows if r["status"] == "interrupted"} == {code}
    finished = {r["name"] for r in rows if r["status"] == "ok"}
    expected = {"summary.json", "notes.txt", "m0.slow.onnx.data"}
    expected |= {f"m{i}.report.json" for i in range(4)}
    expected |= {f"{name}.slow.onnx" for name in finished}
    assert {p.name for p in out.iterdir()} == expected  # no temp files, no unfinished outputs
    after = _hashes(tmp_path)
    rewritten = {f"out/{name}.report.json" for name in finished} | {"out/summary.json"}
    rewritten |= {f"out/{name}.slow.onnx" for name in finished}
    assert {k: v for k, v in after.items() if k not in rewritten} == {
        k: v for k, v in before.items() if k not in rewritten
    }


def test_batch_appends_its_summary_to_the_step_summary_and_logs_start_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mlp(tmp_path / "models" / "one.onnx", seed=1)
    _mlp(tmp_path / "models" / "two.onnx", seed=2)
    step_summary = tmp_path / "step.md"
    step_summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "models"), "-c", str(_strip_config(tmp_path)), "-o", str(out)]
    result = runner.invoke(app, [*args, "--jobs", "2", "--no-validate"])
    assert result.exit_code == 0, result.output
    text = step_summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n## mcompress batch (")
    assert "| one |" in text and "| two |" in text and "2 ok, exit 0" in text
    lines = result.stderr.splitlines()
    for name in ("one", "two"):
        start = next(i for i, line in enumerate(lines) if line.endswith(f"{name}.onnx"))
        done = next(
            i
            for i, line in enumerate(lines)
            if line.startswith("[") and f"ok {name}" in line.replace(f"{tmp_path}/models/", "")
        )
        assert lines[start].startswith("[start] ") and start < done


def test_plain_log_never_prints_a_result_before_its_start(tmp_path: Path) -> None:
    """Events from the worker pool can arrive out of order (a retried model's start)."""
    from mcompress.cli.batch import _BatchDisplay

    src = _mlp(tmp_path / "m.onnx")
    cfg = config.load(_strip_config(tmp_path))
    (tmp_path / "out").mkdir()
    [job] = batch_plan.plan([src], cfg, tmp_path / "out", "strip", force=False, data_map=[])
    display = _BatchDisplay([job], quiet=False)
    logged: list[str] = []
    display.log = logged.append  # type: ignore[method-assign]
    row = batch.Row(model=str(src), name="m", status="ok", exit_code=0, seconds=0.1)
    display.event("done", job.index, row)
    display.event("start", job.index, None)
    assert logged[0] == f"[start] {src}" and logged[1].startswith(f"[1/1] ok {src}")
    assert len(logged) == 2
