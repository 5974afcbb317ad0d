"""The README's CI examples run as written (their shell commands, not the Actions runner),
and the shell niceties CI scripts rely on: --version and completion."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcompress import __version__
from tests.conftest import REPO, SAMPLES

# The README is the source; MCOMPRESS_README points at a draft while a section is written.
README = Path(os.environ.get("MCOMPRESS_README", REPO / "README.md"))
START, END = "<!-- ci-example:start -->", "<!-- ci-example:end -->"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def _workflow() -> dict:
    text = _readme()
    assert START in text and END in text, f"{README} lacks the {START} ... {END} markers"
    section = text.split(START, 1)[1].split(END, 1)[0]
    [block] = _fenced(section, "yaml")
    return yaml.safe_load(block)


def _env(workdir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a CI shell: this Python's `mcompress` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["GITHUB_STEP_SUMMARY"] = str(workdir / "step_summary.md")
    env.update(extra)
    return env


def _shell(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # GitHub runs `run:` steps with `bash --noprofile --norc -eo pipefail {0}`.
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _project(tmp_path: Path, model: str, data: str) -> Path:
    """A user's repository: their model and held-out data where the example expects them."""
    for source, target in (
        (SAMPLES / "digits_cnn.onnx", model),
        (SAMPLES / "digits_val.npz", data),
    ):
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tmp_path / target)
    return tmp_path


@pytest.mark.slow
def test_github_actions_example_runs_as_written(tmp_path: Path) -> None:
    workflow = _workflow()
    [job] = workflow["jobs"].values()
    env = {k: str(v) for k, v in job.get("env", {}).items()}
    project = _project(tmp_path, env["MODEL"], env["DATA"])
    shell_env = _env(project, env)
    steps = job["steps"]
    ran = 0
    for step in steps:
        command = step.get("run")
        if command is None:
            continue
        if command.lstrip().startswith("pip install"):
            assert "mcompress" in command  # installing is the runner's business, not ours
            continue
        result = _shell(command, project, shell_env)
        assert result.returncode == 0, (step.get("name"), result.stdout, result.stderr)
        ran += 1
    assert ran >= 2
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0].get("if") == "always()"
    paths = uploads[0]["with"]["path"].split()
    assert any(p.endswith(".onnx") for p in paths) and any(p.endswith(".html") for p in paths)
    for path in paths:
        assert (project / path).is_file(), path
    report = json.loads((project / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["passed"] is True
    assert {g["name"] for g in report["gates"]} >= {"max_accuracy_drop", "min_compression_ratio"}
    assert report["validation"]["task"]["accuracy_drop"] <= 0.01
    html = (project / "out" / "report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "|" in (project / "step_summary.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_shell_script_example_tells_gate_failures_apart(tmp_path: Path) -> None:
    [script] = [s for s in _fenced(_readme(), "bash") if "case $?" in s]
    project = _project(tmp_path, "model.onnx", "val.npz")
    result = subprocess.run(
        ["bash", "-c", script], cwd=project, env=_env(project, {}), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compressed, all gates passed" in result.stdout
    assert (project / "model.level2.onnx").is_file() and (project / "report.json").is_file()
    # a gate that cannot pass: the script reports it and exits 1
    strict = script.replace("--max-accuracy-drop 0.01", "--min-compression-ratio 100")
    result = subprocess.run(
        ["bash", "-c", strict], cwd=project, env=_env(project, {}), capture_output=True, text=True
    )
    assert (result.returncode, "a gate failed" in result.stdout) == (1, True), result.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_example_builds_the_model(tmp_path: Path) -> None:
    [makefile] = _fenced(_readme(), "make")
    (tmp_path / "Makefile").write_text(makefile, encoding="utf-8")
    project = _project(tmp_path, "models/classifier.onnx", "data/val.npz")
    result = subprocess.run(
        ["make", "out/model.onnx"],
        cwd=project,
        env=_env(project, {}),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (project / "out" / "model.onnx").is_file()
    assert (project / "out" / "report.html").is_file()


@pytest.mark.slow
def test_version_and_shell_completion() -> None:
    def mcompress(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mcompress", *args], capture_output=True, text=True
        )

    version = mcompress("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"mcompress {__version__}")
    completion = subprocess.run(
        [shutil.which("mcompress") or "mcompress", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
    )
    assert completion.returncode == 0, completion.stderr
    assert "complete" in completion.stdout and "_MCOMPRESS_COMPLETE" in completion.stdout
