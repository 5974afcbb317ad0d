"""`batch --executor ray` on a local Ray instance with 2 CPUs: the local pool's outputs and
rows, a worker that dies is a failed row while the others finish, nodes must see the paths,
and without Ray the option is exit 2 naming the install command."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mcompress import batch_plan, batch_ray, config
from mcompress.cli import app
from mcompress.errors import UsageError
from tests import builders
from tests.conftest import REPO, SAMPLES

runner = CliRunner()


def kill_worker_on_crash_models() -> None:
    """Ray worker setup hook: compressing `crash*.onnx` SIGKILLs the worker (as the kernel's
    OOM killer would), after noting it in `crash.kills` beside the model."""
    from mcompress import pipeline

    run = pipeline.run

    def crashing_run(cfg: Any, options: Any) -> Any:
        model = Path(options.input_path)
        if model.name.startswith("crash"):
            with open(model.with_suffix(".kills"), "a", encoding="utf-8") as f:
                f.write("killed\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return run(cfg, options)

    pipeline.run = crashing_run


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """One local Ray instance for the module; batch uses a driver that is already connected.
    address="local" starts a fresh instance even when a Ray cluster runs on this machine.
    Workers import the setup hook from this file, so they get the repository on their path
    (pytest puts it on its own path only)."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={
            "worker_process_setup_hook": kill_worker_on_crash_models,
            "env_vars": {"PYTHONPATH": path},
        },
    )
    yield ray
    ray.shutdown()


def _rows(out: Path) -> list[dict[str, Any]]:
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))["models"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.slow
def test_ray_batch_writes_what_the_local_pool_writes(
    ray_instance: Any, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "in").mkdir()
    for model in ("digits_cnn.onnx", "digits_mlp.onnx"):
        shutil.copy(SAMPLES / model, tmp_path / "in")
    (tmp_path / "in" / "corrupt.onnx").write_bytes(b"\x08\x07not an onnx model")
    monkeypatch.chdir(tmp_path)
    args = ["batch", "in", "-c", "level1", "-o", "out", "--samples", "16"]

    local = runner.invoke(app, [*args, "--jobs", "2"])
    shutil.move("out", "local")
    on_ray = runner.invoke(app, [*args, "--executor", "ray"])

    assert (local.exit_code, on_ray.exit_code) == (2, 2), on_ray.output
    rows = _rows(Path("out"))
    assert rows == _rows(Path("local"))
    assert [(r["name"], r["status"]) for r in rows] == [
        ("corrupt", "failed"),
        ("digits_cnn", "ok"),
        ("digits_mlp", "ok"),
    ]
    written = sorted(p.name for p in Path("out").iterdir())
    assert written == sorted(p.name for p in Path("local").iterdir())
    for name in ("digits_cnn.level1.onnx", "digits_mlp.level1.onnx"):
        assert Path("out", name).read_bytes() == Path("local", name).read_bytes()
    assert "Ray at default" in on_ray.output and "[3/3]" in on_ray.output


@pytest.mark.slow
def test_a_ray_worker_that_dies_fails_only_its_own_model(ray_instance: Any, tmp_path: Path) -> None:
    names = ["m0", "crash", "m2"]
    models = [
        builders.save(builders.mlp(hidden=32, seed=i), tmp_path / f"{name}.onnx")
        for i, name in enumerate(names)
    ]
    out = tmp_path / "out"
    out.mkdir()
    jobs = batch_plan.plan(models, config.build({"passes": [{"type": "strip"}]}), out, "strip")

    outcome = batch_ray.run_batch(jobs, lambda *event: None)

    statuses = [(row.name, row.status, row.exit_code) for row in outcome.rows]
    assert statuses == [("m0", "ok", 0), ("crash", "failed", 1), ("m2", "ok", 0)]
    assert outcome.rows[1].error is not None and outcome.rows[1].error["type"] == "WorkerDied"
    assert outcome.exit_code == 1
    assert (tmp_path / "crash.kills").read_text() == "killed\nkilled\n"  # retried once
    assert sorted(p.name for p in out.iterdir()) == [
        "m0.report.json",
        "m0.strip.onnx",
        "m2.report.json",
        "m2.strip.onnx",
    ]


@pytest.mark.slow
def test_every_node_must_see_the_inputs(ray_instance: Any, tmp_path: Path) -> None:
    model = builders.save(builders.mlp(hidden=8), tmp_path / "m.onnx")
    (tmp_path / "out").mkdir()
    jobs = batch_plan.plan(
        [model], config.build({"passes": [{"type": "strip"}]}), tmp_path / "out", "s"
    )
    model.unlink()  # as if the driver saw a path the nodes do not

    with pytest.raises(UsageError, match=f"does not see '{model}': inputs and outputs must"):
        batch_ray.run_batch(jobs, lambda *event: None)

    assert list((tmp_path / "out").iterdir()) == []  # the probe's marker is gone


@pytest.mark.slow  # starts the module's Ray instance
def test_every_node_must_run_this_mcompress_version(
    ray_instance: Any, tmp_path: Path, monkeypatch
) -> None:
    model = builders.save(builders.mlp(hidden=8), tmp_path / "m.onnx")
    jobs = batch_plan.plan([model], config.build({"passes": [{"type": "strip"}]}), tmp_path, "s")
    monkeypatch.setattr(batch_ray, "__version__", "0.0.1")  # this process only, not the nodes

    with pytest.raises(UsageError, match=r"runs mcompress \S+, this is 0.0.1$"):
        batch_ray.run_batch(jobs, lambda *event: None)


@pytest.mark.slow  # starts the module's Ray instance
def test_interrupt_cancels_tasks_and_keeps_only_finished_models(
    ray_instance: Any, tmp_path: Path
) -> None:
    models = [
        builders.save(builders.mlp(hidden=256, seed=i), tmp_path / f"m{i}.onnx") for i in range(6)
    ]
    out = tmp_path / "out"
    out.mkdir()
    cfg = config.build(
        {"passes": [{"type": "strip"}], "validate": {"samples": 1000, "latency_runs": 1000}}
    )
    jobs = batch_plan.plan(models, cfg, out, "strip")

    def listener(kind: str, index: int, payload: object) -> None:
        if kind == "start":  # Ctrl-C once a model runs (2 CPUs, 6 models); last: kills workers
            raise KeyboardInterrupt

    outcome = batch_ray.run_batch(jobs, listener)

    statuses = [row.status for row in outcome.rows]
    assert outcome.interrupted and set(statuses) <= {"ok", "interrupted"}
    assert statuses.count("interrupted") >= 4, statuses
    finished = {row.name for row in outcome.rows if row.status == "ok"}
    expected = {f"{name}.{kind}" for name in finished for kind in ("strip.onnx", "report.json")}
    assert {p.name for p in out.iterdir()} == expected


def test_executor_options_are_checked_before_any_work(tmp_path: Path, monkeypatch) -> None:
    model = builders.save(builders.mlp(hidden=8), tmp_path / "m.onnx")
    args = ["batch", str(model), "-c", "level1", "-o", str(tmp_path / "out")]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed

    no_ray = runner.invoke(app, [*args, "--executor", "ray"]).exception
    jobs = runner.invoke(app, [*args, "--executor", "ray", "--jobs", "2"]).exception
    address = runner.invoke(app, [*args, "--address", "auto"]).exception

    assert isinstance(no_ray, UsageError) and no_ray.exit_code == 2
    assert (no_ray.message, no_ray.hint) == (
        "--executor ray needs Ray, which is not installed",
        "run: pip install 'mcompress[ray]'",
    )
    assert isinstance(jobs, UsageError) and jobs.message.startswith("--jobs is for the local")
    assert isinstance(address, UsageError) and address.message == "--address is for --executor ray"
    assert not (tmp_path / "out").exists()
