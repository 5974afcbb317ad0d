"""`batch --shard I/N` and `batch-merge`: a partition covering every model once, and a merged
summary equal to the unsharded batch's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mcompress.cli import app
from mcompress.errors import UsageError
from mcompress.shard import Shard
from tests import builders
from tests.conftest import SAMPLES
from tests.test_ci_example import _env, _fenced, _readme, _shell

SHARDS_START, SHARDS_END = "<!-- ci-shards-example:start -->", "<!-- ci-shards-example:end -->"

runner = CliRunner()


def test_shard_parse_accepts_i_of_n_only() -> None:
    assert Shard.parse("2/3") == Shard(2, 3)
    assert Shard.parse(" 1 / 1 ").summary_name == "summary-1-of-1.json"
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(UsageError, match=f"--shard '{bad}' must be I/N with 1 <= I <= N"):
            Shard.parse(bad)


def test_shards_cover_every_model_once_whatever_the_argument_order() -> None:
    models = [Path(p) for p in ("z/m.onnx", "a/m.onnx", "b/x.onnx", "a/b.onnx", "c.onnx")]
    parts = [Shard(i, 3).members(models) for i in (1, 2, 3)]

    assert sorted(i for part in parts for i in part) == [0, 1, 2, 3, 4]
    # path order a/b, a/m, b/x, c, z/m: shard 1 takes a/b and c, shard 2 a/m and z/m
    assert [[models[i].as_posix() for i in part] for part in parts] == [
        ["a/b.onnx", "c.onnx"],
        ["z/m.onnx", "a/m.onnx"],
        ["b/x.onnx"],
    ]
    reordered = list(reversed(models))
    assert {reordered[i] for i in Shard(2, 3).members(reordered)} == {models[0], models[1]}
    assert Shard(5, 5).members(models[:3]) == []


def _models(root: Path) -> list[str]:
    for i, folder in enumerate(("a", "b", "c")):
        (root / folder).mkdir(parents=True)
        builders.save(builders.mlp(hidden=16 * (i + 1), seed=i), root / folder / "net.onnx")
    builders.save(builders.mlp(hidden=8, seed=5), root / "a" / "small.onnx")
    (root / "c" / "corrupt.onnx").write_bytes(b"\x08\x07not an onnx model")
    return [str(root / folder) for folder in ("c", "a", "b")]


def _batch(paths: list[str], cfg: Path, out: Path, *extra: str) -> int:
    args = ["batch", *paths, "-c", str(cfg), "-o", str(out), "--jobs", "1", "--no-validate"]
    return runner.invoke(app, [*args, *extra]).exit_code


def _without_timings(summary: dict) -> dict:
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in summary["models"]]
    return {**{k: v for k, v in summary.items() if k != "seconds"}, "models": rows}


@pytest.mark.slow
def test_three_shards_merge_into_the_unsharded_summary(tmp_path: Path, monkeypatch) -> None:
    paths = _models(tmp_path / "in")
    cfg = tmp_path / "strip.yaml"
    cfg.write_text("passes:\n  - {type: strip}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    out = Path("out")

    assert _batch(paths, cfg, out) == 2  # the corrupt model
    shutil.move(out, "whole")
    codes = [_batch(paths, cfg, out, "--shard", f"{i}/3") for i in (1, 2, 3)]
    step_summary = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    merged = runner.invoke(app, ["batch-merge", str(out), "--json"])
    again = runner.invoke(app, ["batch-merge", str(out)])
    assert "summary.json' already exists; pass --force" in str(again.exception)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert runner.invoke(app, ["batch-merge", str(out), "--force"]).exit_code == 2

    whole = json.loads(Path("whole/summary.json").read_text(encoding="utf-8"))
    shards = [json.loads((out / f"summary-{i}-of-3.json").read_text()) for i in (1, 2, 3)]
    assert [len(s["models"]) for s in shards] == [2, 2, 1] and sorted(codes) == [0, 0, 2]
    assert sorted(p for s in shards for p in s["shard"]["positions"]) == [0, 1, 2, 3, 4]
    assert merged.exit_code == 2, merged.output
    assert json.loads(merged.stdout) == json.loads((out / "summary.json").read_text())
    assert _without_timings(json.loads(merged.stdout)) == _without_timings(whole)
    assert [r["name"] for r in whole["models"]] == ["corrupt", "net", "net-2", "small", "net-3"]
    outputs = sorted(p.name for p in out.glob("*.onnx"))
    assert outputs == sorted(p.name for p in Path("whole").glob("*.onnx"))
    for name in outputs:
        assert (out / name).read_bytes() == Path("whole", name).read_bytes()
    table = step_summary.read_text(encoding="utf-8")
    assert (
        table.startswith("## mcompress batch (") and ": 5 model(s), 1 failed, 4 ok, exit 2" in table
    )
    assert "| net-2 | " in table and "| failed (exit 2) |" in table


def test_merge_names_a_missing_or_repeated_shard(tmp_path: Path) -> None:
    summary = {
        "schema_version": 1,
        "config": "level1",
        "jobs": 1,
        "seconds": 0.1,
        "interrupted": False,
        "models": [{"model": "m.onnx", "name": "m", "status": "ok", "exit_code": 0}],
    }
    for folder, index in (("one", 1), ("three", 3), ("again", 3)):
        (tmp_path / folder).mkdir()
        shard = {"index": index, "count": 3, "models_total": 3, "positions": [index - 1]}
        path = tmp_path / folder / f"summary-{index}-of-3.json"
        path.write_text(json.dumps({**summary, "shard": shard}), encoding="utf-8")

    missing = runner.invoke(app, ["batch-merge", str(tmp_path / "one"), str(tmp_path / "three")])
    repeated = runner.invoke(app, ["batch-merge", str(tmp_path)])
    empty = runner.invoke(app, ["batch-merge", str(tmp_path / "nothing")])

    errors = [result.exception for result in (missing, repeated, empty)]
    assert all(isinstance(e, UsageError) and e.exit_code == 2 for e in errors)
    assert [e.message for e in errors] == [  # type: ignore[union-attr]
        "shard 2 of 3 missing: no summary-2-of-3.json among the given paths",
        f"shard 3 of 3 is given twice: '{tmp_path / 'again' / 'summary-3-of-3.json'}' "
        f"and '{tmp_path / 'three' / 'summary-3-of-3.json'}'",
        f"'{tmp_path / 'nothing'}' is not a file or a folder",
    ]


@pytest.mark.slow
def test_readme_matrix_example_runs_as_written(tmp_path: Path) -> None:
    """Each matrix job's shell steps in its own checkout, then the merge job over the union of
    their uploads (download-artifact with merge-multiple puts them in one folder)."""
    text = _readme()
    section = text.split(SHARDS_START, 1)[1].split(SHARDS_END, 1)[0]
    [block] = _fenced(section, "yaml")
    jobs = yaml.safe_load(block)["jobs"]
    shards = jobs["compress"]["strategy"]["matrix"]["shard"]
    merged = tmp_path / "merge"
    for shard in shards:
        checkout = tmp_path / f"shard{shard}"
        (checkout / "models").mkdir(parents=True)
        for model in ("digits_cnn.onnx", "digits_mlp.onnx"):
            shutil.copy(SAMPLES / model, checkout / "models")
        _run_steps(jobs["compress"]["steps"], checkout, {"matrix.shard": str(shard)})
        shutil.copytree(checkout / "out", merged / "out", dirs_exist_ok=True)

    _run_steps(jobs["merge"]["steps"], merged, {})

    summary = json.loads((merged / "out" / "summary.json").read_text(encoding="utf-8"))
    assert len(shards) == 3 and summary["exit_code"] == 0
    assert [(r["name"], r["status"]) for r in summary["models"]] == [
        ("digits_cnn", "ok"),
        ("digits_mlp", "ok"),
    ]
    for row in summary["models"]:
        assert (merged / row["output"]).is_file()
    assert "| digits_mlp | " in (merged / "step_summary.md").read_text(encoding="utf-8")


def _run_steps(steps: list[dict], cwd: Path, expressions: dict[str, str]) -> None:
    for step in steps:
        command = step.get("run")
        if command is None or command.lstrip().startswith("pip install"):
            continue
        for name, value in expressions.items():
            command = command.replace("${{ " + name + " }}", value)
        result = _shell(command, cwd, _env(cwd, {}))
        assert result.returncode == 0, (step.get("name"), result.stdout, result.stderr)
